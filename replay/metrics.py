"""requests.parquet: one row per finished call, written as calls finish so that an interrupted
run keeps everything that finished.

A finished call is recorded as a tuple of what the engine, the API cache model and the trace
measured; latencies and costs derived from those are computed per row group with polars (one
vectorised pass, not a Python step per call).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engines.base import Completion, Request
from replay.api_cache import ApiCharge

FLUSH_ROWS = 8192
RECORDED, DERIVED, SCRATCH = "recorded", "derived", "scratch"


def _columns(tier_names: list[str]) -> list[tuple[str, pa.DataType, str]]:
    """Every column in file order, with where it comes from: RECORDED by ``RequestsWriter.add``
    (in this order), DERIVED per row group, or SCRATCH (recorded to derive others, not written)."""
    f64, i64, i32, s = pa.float64(), pa.int64(), pa.int32(), pa.string()
    r, d = RECORDED, DERIVED
    return [
        ("request_id", s, r), ("session_id", s, r), ("turn", i32, r), ("workload", s, r),
        ("instance", i32, r),
        ("arrival_s", f64, r), ("start_s", f64, r), ("first_token_s", f64, r), ("finish_s", f64, r),
        ("ttft_s", f64, d), ("tpot_s", f64, d), ("queue_s", f64, d),
        ("input_tokens", i64, r), ("output_tokens", i64, r), ("reused_tokens", i64, d),
        *[(f"reused_tokens_{name}", i64, r) for name in tier_names],
        ("prefilled_tokens", i64, r), ("loaded_bytes", f64, r), ("load_s", f64, r),
        ("preemptions", i32, r), ("gpu_s", f64, r), ("cost_usd", f64, d),
        ("no_reuse_prefill_s", f64, SCRATCH), ("no_reuse_ttft_s", f64, d),
        ("no_reuse_gpu_s", f64, r), ("no_reuse_cost_usd", f64, d),
        ("api_cached_tokens", i64, r), ("api_cache_write_tokens", i64, r), ("api_cost_usd", f64, r),
        ("api_no_reuse_cost_usd", f64, d),
        ("reported_cached_tokens", i64, r), ("reported_cache_write_tokens", i64, r),
        ("reported_api_cost_usd", f64, r),
    ]


def requests_schema(tier_names: list[str]) -> pa.Schema:
    return pa.schema([(name, t) for name, t, source in _columns(tier_names) if source != SCRATCH])


def _recorded_schema(tier_names: list[str]) -> pa.Schema:
    return pa.schema([(name, t) for name, t, source in _columns(tier_names) if source != DERIVED])


def latency_columns(tier_names: list[str]) -> dict[str, pl.Expr]:
    """Columns every run derives from the recorded times and token counts."""
    queue = pl.col("start_s") - pl.col("arrival_s")
    decode_tokens = pl.col("output_tokens") - 1
    return {
        "ttft_s": pl.col("first_token_s") - pl.col("arrival_s"),
        "tpot_s": pl.when(decode_tokens > 0)
                    .then((pl.col("finish_s") - pl.col("first_token_s")) / decode_tokens),
        "queue_s": queue,
        "no_reuse_ttft_s": queue + pl.col("no_reuse_prefill_s"),
        "reused_tokens": pl.sum_horizontal(*[f"reused_tokens_{name}" for name in tier_names])
                           .cast(pl.Int64),
    }


class RequestsWriter:
    """Buffers recorded calls and appends them to the Parquet file in row groups.

    ``cost_columns``: expressions over the recorded columns for the cost columns (the run's
    prices); the latency columns are derived here.
    """

    def __init__(self, path: str | os.PathLike, tier_names: list[str],
                 cost_columns: Mapping[str, pl.Expr]) -> None:
        self.path = Path(path)
        self.tier_names = list(tier_names)
        self.schema = requests_schema(self.tier_names)
        self.raw = _recorded_schema(self.tier_names)
        self.derived = {**latency_columns(self.tier_names), **cost_columns}
        missing = set(self.schema.names) - set(self.raw.names) - set(self.derived)
        if missing:
            raise ValueError(f"requests columns with no source: {sorted(missing)}")
        self.rows: list[tuple[Any, ...]] = []
        self.count = 0
        # dictionary-encode only the repetitive columns: unique ids and floats gain nothing from it
        self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd",
                                        use_dictionary=["session_id", "workload"])

    def add(self, request: Request, done: Completion, charge: ApiCharge,
            reported: tuple[int | None, int | None, float | None]) -> None:
        """Record a finished call; ``reported``: the trace's cached and cache-write tokens and
        the bill they imply (None where the trace has no usage)."""
        by_tier = done.reused_tokens_by_tier
        self.rows.append((
            request.request_id, request.session_id, request.turn, request.workload, done.instance,
            request.arrival_s, done.start_s, done.first_token_s, done.finish_s,
            request.input_tokens, request.output_tokens, *[by_tier[name] for name in self.tier_names],
            done.prefilled_tokens, done.loaded_bytes, done.load_s, done.preemptions, done.gpu_s,
            done.no_reuse_prefill_s, done.no_reuse_gpu_s,
            charge.cached_tokens, charge.written_tokens, charge.cost_usd, *reported,
        ))
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        columns = list(zip(*self.rows, strict=True))
        raw = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, self.raw, strict=True)],
                                   schema=self.raw)
        frame = pl.from_arrow(raw).with_columns(**self.derived).select(self.schema.names)
        self._writer.write_table(frame.to_arrow().cast(self.schema))
        self.count += len(self.rows)
        self.rows.clear()

    def close(self) -> None:
        self.flush()
        self._writer.close()
