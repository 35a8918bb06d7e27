"""requests.parquet: one row per finished call.

The engine's rows are streamed to a partial file as calls finish, so an interrupted replay
keeps everything that finished. After the replay, ``assemble`` joins them by request_id with
the frames made later (the simulated no-reuse baseline, the API bill), derives latencies and
costs in one vectorised polars pass, and writes requests.parquet under a temporary name that
is renamed at the end: no half-written file ever carries the final name.
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

FLUSH_ROWS = 8192
ENGINE, BASELINE, BILL, DERIVED = "engine", "baseline", "bill", "derived"
BASELINE_PREFIX = "no_reuse_"
# dictionary-encode only the repetitive columns: unique ids and floats gain nothing from it
_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": ["session_id", "workload"]}


Extra = tuple[tuple[str, str], ...]  # an engine's extra columns: (name, Arrow type alias)


def _columns(tier_names: list[str], extra: Extra = ()) -> list[tuple[str, pa.DataType, str]]:
    """Every column in file order, with where it comes from: ENGINE (``RequestsWriter.add``, in
    this order), BASELINE (the no-reuse simulation's engine rows, renamed), BILL (the billing
    pass) or DERIVED (expressions over the others). ``extra``: columns one engine adds (the
    http engine's send lag, HTTP status, server-reported tokens), last, from its completions."""
    f64, i64, i32, s = pa.float64(), pa.int64(), pa.int32(), pa.string()
    e, b, c, d = ENGINE, BASELINE, BILL, DERIVED
    return [
        ("request_id", s, e), ("session_id", s, e), ("turn", i32, e), ("workload", s, e),
        ("instance", i32, e),
        ("arrival_s", f64, e), ("start_s", f64, e), ("first_token_s", f64, e), ("finish_s", f64, e),
        ("ttft_s", f64, d), ("tpot_s", f64, d), ("queue_s", f64, d),
        ("input_tokens", i64, e), ("output_tokens", i64, e), ("reused_tokens", i64, d),
        *[(f"reused_tokens_{name}", i64, e) for name in tier_names],
        ("prefilled_tokens", i64, e), ("recomputed_tokens", i64, e), ("loaded_bytes", f64, e),
        ("load_s", f64, e),
        ("preemptions", i32, e), ("gpu_s", f64, e), ("cost_usd", f64, d),
        ("no_reuse_arrival_s", f64, b), ("no_reuse_first_token_s", f64, b), ("no_reuse_finish_s", f64, b),
        ("no_reuse_ttft_s", f64, d), ("no_reuse_tpot_s", f64, d),
        ("no_reuse_prefilled_tokens", i64, b), ("no_reuse_gpu_s", f64, b), ("no_reuse_cost_usd", f64, d),
        ("api_cached_tokens", i64, c), ("api_cache_write_tokens", i64, c), ("api_cost_usd", f64, c),
        ("api_no_reuse_cost_usd", f64, d),
        ("reported_cached_tokens", i64, c), ("reported_cache_write_tokens", i64, c),
        ("reported_api_cost_usd", f64, c),
        *[(name, pa.type_for_alias(alias), e) for name, alias in extra],
    ]


def requests_schema(tier_names: list[str], extra: Extra = ()) -> pa.Schema:
    return pa.schema([(name, t) for name, t, _ in _columns(tier_names, extra)])


def engine_schema(tier_names: list[str], extra: Extra = ()) -> pa.Schema:
    return pa.schema([(name, t) for name, t, source in _columns(tier_names, extra) if source == ENGINE])


def baseline_columns(tier_names: list[str]) -> list[str]:
    """The engine columns the baseline contributes, without their ``no_reuse_`` prefix."""
    return [name.removeprefix(BASELINE_PREFIX) for name, _, source in _columns(tier_names)
            if source == BASELINE]


def _latency(prefix: str = "") -> dict[str, pl.Expr]:
    """TTFT and TPOT of one simulation's times (``prefix``: "" or the baseline's)."""
    col = lambda name: pl.col(prefix + name)  # noqa: E731
    decode_tokens = pl.col("output_tokens") - 1
    return {
        f"{prefix}ttft_s": col("first_token_s") - col("arrival_s"),
        f"{prefix}tpot_s": pl.when(decode_tokens > 0)
                             .then((col("finish_s") - col("first_token_s")) / decode_tokens),
    }


def derived_columns(tier_names: list[str]) -> dict[str, pl.Expr]:
    """Columns every run derives from the recorded times and token counts."""
    return {
        **_latency(), **_latency(BASELINE_PREFIX),
        "queue_s": pl.col("start_s") - pl.col("arrival_s"),
        "reused_tokens": pl.sum_horizontal(*[f"reused_tokens_{name}" for name in tier_names])
                           .cast(pl.Int64),
    }


class RequestsWriter:
    """Buffers the engine's finished calls and appends them to a Parquet file in row groups."""

    def __init__(self, path: str | os.PathLike, tier_names: list[str], extra: Extra = ()) -> None:
        self.path = Path(path)
        self.tier_names = list(tier_names)
        self.extra = [name for name, _ in extra]
        self.schema = engine_schema(self.tier_names, tuple(extra))
        self.rows: list[tuple[Any, ...]] = []
        self.count = 0
        self._writer = pq.ParquetWriter(self.path, self.schema, **_WRITE_OPTIONS)

    def add(self, request: Request, done: Completion) -> None:
        """Record a finished call."""
        by_tier = done.reused_tokens_by_tier
        self.rows.append((
            request.request_id, request.session_id, request.turn, request.workload, done.instance,
            request.arrival_s, done.start_s, done.first_token_s, done.finish_s,
            request.input_tokens, request.output_tokens, *[by_tier[name] for name in self.tier_names],
            done.prefilled_tokens, done.recomputed_tokens, done.loaded_bytes, done.load_s, done.preemptions,
            done.gpu_s, *[(done.extra or {}).get(name) for name in self.extra],
        ))
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        columns = list(zip(*self.rows, strict=True))
        # from_pandas: a NaN time (a failed call's first token) is stored as null
        arrays = [pa.array(c, type=f.type, from_pandas=True)
                  for c, f in zip(columns, self.schema, strict=True)]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.count += len(self.rows)
        self.rows.clear()

    def close(self) -> None:
        self.flush()
        self._writer.close()


def baseline_frame(path: str | os.PathLike, tier_names: list[str]) -> pl.DataFrame:
    """The no-reuse simulation's engine rows as the baseline columns, keyed by request_id."""
    keep = baseline_columns(tier_names)
    return (pl.read_parquet(path, columns=["request_id", *keep])
            .rename({name: BASELINE_PREFIX + name for name in keep}))


def assemble(engine_rows: str | os.PathLike, final: str | os.PathLike, tier_names: list[str],
             baseline: pl.DataFrame | None, bill: pl.DataFrame,
             cost_columns: Mapping[str, pl.Expr], extra: Extra = ()) -> pl.DataFrame:
    """Join the engine rows (in finish order) with the baseline (None: its columns stay null)
    and the bill by request_id, derive the rest, and write ``final`` atomically."""
    schema = requests_schema(tier_names, extra)
    types = {name: t for name, t, _ in _columns(tier_names)}
    frame = pl.read_parquet(engine_rows)
    if baseline is None:
        baseline = pl.DataFrame({"request_id": frame["request_id"]}).with_columns(
            pl.lit(None, dtype=pl.from_arrow(pa.array([], type=types[BASELINE_PREFIX + name])).dtype)
              .alias(BASELINE_PREFIX + name) for name in baseline_columns(tier_names))
    frame = (frame.join(baseline, on="request_id", how="left", maintain_order="left")
                  .join(bill, on="request_id", how="left", maintain_order="left"))
    frame = frame.with_columns(**derived_columns(tier_names)).with_columns(**cost_columns)
    missing = set(schema.names) - set(frame.columns)
    if missing:
        raise ValueError(f"requests columns with no source: {sorted(missing)}")
    table = frame.select(schema.names).to_arrow().cast(schema)
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    pq.write_table(table, tmp, **_WRITE_OPTIONS)
    os.replace(tmp, final)
    return pl.from_arrow(table)
