"""requests.parquet: one row per finished call, written as calls finish so that an interrupted
run keeps everything that finished."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FLUSH_ROWS = 8192


def requests_schema(tier_names: list[str]) -> pa.Schema:
    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    fields = [
        ("request_id", s), ("session_id", s), ("turn", pa.int32()), ("workload", s),
        ("instance", pa.int32()),
        ("arrival_s", f64), ("start_s", f64), ("first_token_s", f64), ("finish_s", f64),
        ("ttft_s", f64), ("tpot_s", f64), ("queue_s", f64),
        ("input_tokens", i64), ("output_tokens", i64), ("reused_tokens", i64),
        *[(f"reused_tokens_{name}", i64) for name in tier_names],
        ("prefilled_tokens", i64), ("loaded_bytes", f64), ("load_s", f64), ("preemptions", pa.int32()),
        ("gpu_s", f64), ("cost_usd", f64),
        ("no_reuse_ttft_s", f64), ("no_reuse_gpu_s", f64), ("no_reuse_cost_usd", f64),
        ("api_cached_tokens", i64), ("api_cache_write_tokens", i64), ("api_cost_usd", f64),
        ("api_no_reuse_cost_usd", f64),
        ("reported_cached_tokens", i64), ("reported_cache_write_tokens", i64),
        ("reported_api_cost_usd", f64),
    ]
    return pa.schema(fields)


class RequestsWriter:
    """Buffers rows column by column and appends them to the Parquet file in row groups."""

    def __init__(self, path: str | os.PathLike, tier_names: list[str]) -> None:
        self.path = Path(path)
        self.schema = requests_schema(tier_names)
        self.columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self.pending = 0
        self.count = 0
        self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")

    def add(self, row: dict[str, Any]) -> None:
        for name, values in self.columns.items():
            values.append(row[name])
        self.pending += 1
        if self.pending >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            arrays = [pa.array(self.columns[f.name], type=f.type) for f in self.schema]
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
            self.count += self.pending
            self.pending = 0
            for values in self.columns.values():
                values.clear()

    def close(self) -> None:
        self.flush()
        self._writer.close()
