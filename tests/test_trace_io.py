"""Parquet round trip, atomic writes, and the one-line errors for files we cannot read."""

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tracekit import row, table, write

from traces.cli import main
from traces.io import TraceWriter, read_meta, read_table, scan
from traces.schema import SCHEMA, TraceError, TraceMeta


def test_round_trip_keeps_every_column_and_metadata_key(tmp_path):
    rows = [
        row("s", 0, 10, [1, 2], output_tokens=3, arrival_s=1.5, model="m",
            reported_cached_tokens=4, reported_cache_write_tokens=6),
        row("s", 1, 17, [2**64 - 1], parent="s-0", kept=3, think_s=2.25, arrival_s=5.0,
            segments=[{"kind": "history", "tokens": 13}, {"kind": "tool_result", "tokens": 4}]),
    ]
    path = write(tmp_path / "t.parquet", rows, block_size=4)
    back = read_table(path)
    assert back.schema.remove_metadata().equals(SCHEMA)
    assert back.to_pylist() == table(rows).to_pylist()
    meta = read_meta(path)
    assert (meta.schema_version, meta.block_size, meta.source) == (1, 4, {"test": "t.parquet"})
    raw = pq.read_schema(path).metadata
    assert {b"schema_version", b"block_size", b"source"} <= set(raw)
    assert isinstance(scan(path), pl.LazyFrame)
    assert scan(path).select(pl.col("new_block_hashes").list.len()).collect().to_series().to_list() == [2, 1]


def test_writer_streams_row_groups_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "t.parquet"
    with TraceWriter(path, TraceMeta(block_size=4), row_group_rows=2) as w:
        for i in range(5):
            w.add(np.array([i], np.uint64), [("user", 4)], session_id=f"s{i}", request_id=f"r{i}",
                  turn=0, agent="main", workload="w", arrival_s=0.0, think_s=0.0, input_tokens=4,
                  output_tokens=0, kept_blocks=0)
    assert pq.ParquetFile(path).num_row_groups == 3
    broken = tmp_path / "broken.parquet"
    with pytest.raises(RuntimeError), TraceWriter(broken, TraceMeta(block_size=4)) as w:
        raise RuntimeError("crash mid-write")
    assert not broken.exists() and not (tmp_path / "broken.parquet.partial").exists()


@pytest.mark.parametrize("content,reason", [
    (b"session_id,turn\na,0\n", "not a readable Parquet file"),
    (b"", "not a readable Parquet file"),
])
def test_not_parquet_is_one_clear_line(tmp_path, content, reason):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(TraceError, match=reason):
        read_meta(path)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert reason in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_truncated_file_is_one_clear_line(tmp_path):
    path = write(tmp_path / "t.parquet", [row("s", 0, 8, [1, 2])])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 1
    assert "not a readable Parquet file" in result.output


def test_unknown_schema_version_and_missing_file(tmp_path):
    path = tmp_path / "v9.parquet"
    meta = TraceMeta(block_size=4, schema_version=9)
    pq.write_table(table([row("s", 0, 8, [1, 2])]).replace_schema_metadata(meta.to_arrow()), path)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1 and "unsupported schema_version 9" in result.output
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope.parquet")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_zero_block_size_is_rejected(tmp_path):
    path = tmp_path / "bs0.parquet"
    meta = TraceMeta(block_size=0)
    pq.write_table(table([row("s", 0, 8, [])]).replace_schema_metadata(meta.to_arrow()), path)
    with pytest.raises(TraceError, match="block_size must be > 0"):
        read_meta(path)


def test_inspect_json_has_snake_case_figures(tmp_path):
    path = write(tmp_path / "t.parquet", [row("s", 0, 8, [1, 2])])
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    figures = json.loads(result.output)
    assert figures["requests"] == 1 and figures["sessions"] == 1 and "ideal_reuse" in figures
