"""The figures `traces inspect` prints: sizes, shapes, timing and the ideal prefix reuse."""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from traces.errors import TraceError
from traces.io import check_schema, reading, scan
from traces.validate import check_rows


def ideal_reuse_frame(lf: pl.LazyFrame, block_size: int) -> pl.LazyFrame:
    """Per request: ``reused_tokens`` under an infinite prefix cache, in arrival order.

    A block counts only if every block before it in the prompt was seen earlier (prefix
    semantics). Kept blocks come from the parent's sequence, already seen; a new block was seen
    if any request earlier in arrival order (ties: file order) carried it. At most
    ``(input_tokens - 1) // block_size`` blocks are reusable (the last token is always computed;
    ``traces.hashing.reusable_blocks``, here as a polars expression).
    """
    bs = block_size
    ordered = (
        lf.with_row_index("row")
        .sort("arrival_s", "row", maintain_order=True)
        .with_row_index("order")
    )
    blocks = (
        ordered.select("order", pl.col("new_block_hashes").alias("h"))
        .explode("h")
        .drop_nulls("h")
        .with_columns(pos=pl.int_range(pl.len()).over("order"))
        .with_columns(first=pl.col("order").min().over("h"))
        .filter(pl.col("first") == pl.col("order"))
        .group_by("order")
        .agg(first_unseen=pl.col("pos").min())
    )
    return (
        ordered.join(blocks, on="order", how="left")
        .with_columns(
            lead=pl.coalesce("first_unseen", pl.col("new_block_hashes").list.len()),
        )
        .with_columns(
            reused_tokens=pl.min_horizontal(
                pl.col("kept_blocks") + pl.col("lead"),
                (pl.col("input_tokens") - 1).clip(lower_bound=0) // bs,
            ) * bs
        )
        .select("row", "request_id", "workload", pl.col("input_tokens").cast(pl.Int64),
                pl.col("reused_tokens").cast(pl.Int64))
        .sort("row")
    )


def aiperf_hit_rate(lf: pl.LazyFrame, block_size: int) -> float:
    """The cache hit rate AIPerf's ``aiperf analyze-trace`` prints for this trace's hash_ids (as
    ``traces export mooncake --block-size <the trace's>`` writes them), computed as AIPerf's
    PrefixAnalyzer does: requests in arrival order (ties: file order); a request's rate is the
    number of its prompt blocks before the first one no earlier prompt carried, over all its
    prompt blocks (the last, partial one included); the figure is the unweighted mean over
    requests with at least one block (a child sent at its parent's instant but earlier in the
    file is taken after it, as its blocks need the parent's). Unlike ideal reuse it weighs a
    100-token call as much as a 100k-token one, counts the last block, and counts as seen only
    blocks of earlier prompts, not the output blocks a parent completed.

    Chained hashes make "seen" monotone along a prompt (a seen block means its whole prefix
    was seen), so the seen prefix is found by bisection and only unseen blocks are added.
    """
    from traces.expand import CallExpander

    calls = (lf.with_row_index("row").sort("arrival_s", "row", maintain_order=True)
               .select("request_id", "parent_id", "kept_blocks", "new_block_hashes", "arrival_s", "turn",
                       "row", pl.col("input_tokens", "output_tokens").cast(pl.Int64))
               .collect())
    position = calls.select(parent_id="request_id", parent_pos=pl.int_range(pl.len()))
    late = (calls.with_row_index("pos").join(position, on="parent_id")
                 .filter(pl.col("parent_pos") > pl.col("pos")))
    if late.height:  # a child sent at the same instant as its parent but earlier in the file
        calls = calls.sort("arrival_s", "turn", "row", maintain_order=True)
    expander = CallExpander(calls, block_size)
    seen: set[int] = set()
    total, counted = 0.0, 0
    rows = calls.select("request_id", "parent_id", "kept_blocks", "input_tokens", "output_tokens")
    for i, (rid, parent, kept, inp, out) in enumerate(rows.iter_rows()):
        try:
            blocks, _ = expander.expand(i, rid, parent, kept, inp, out)
        except KeyError:
            raise TraceError(f"request {rid}: parent {parent} is not an earlier call of the file "
                             "(traces validate lists every problem)") from None
        n = len(blocks)
        if n == 0:
            continue
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if int(blocks[mid]) in seen:
                lo = mid + 1
            else:
                hi = mid
        total += lo / n
        counted += 1
        seen.update(blocks[lo:].tolist())
    return total / counted if counted else 0.0


def _quantiles(col: str, qs: dict[str, float], frame: pl.DataFrame) -> dict[str, float | None]:
    out = {}
    for name, q in qs.items():
        value = frame.select(pl.col(col).quantile(q, "nearest")).item()
        out[name] = None if value is None else float(value)
    return out


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Summary figures of a trace; keys are snake_case names with units where they have one.
    The schema and the rows are checked first (traces.validate) and damaged pages are one
    TraceError line."""
    meta = check_schema(path)
    check_rows(path, "not inspected")
    with reading(path):
        return _figures(path, meta.block_size, meta.source, scan(path))


def _figures(path: str | os.PathLike, block_size: int, source: dict[str, Any],
             lf: pl.LazyFrame) -> dict[str, Any]:
    df = lf.select(
        "session_id", "request_id", "parent_id", "workload", "think_s",
        pl.col("input_tokens", "output_tokens").cast(pl.Int64), "kept_blocks",
    ).collect()
    per_session = df.group_by("session_id").len()
    parents = df.select(pl.col("request_id").alias("parent_id"),
                        pl.col("input_tokens").alias("parent_input"))
    growth = (
        df.filter(pl.col("kept_blocks") > 0)
        .join(parents, on="parent_id")
        .select(growth=pl.col("input_tokens") - pl.col("parent_input"))
    )
    reuse = ideal_reuse_frame(lf, block_size).collect()
    by_workload = reuse.group_by("workload").agg(
        pl.col("reused_tokens").sum() / pl.col("input_tokens").sum()
    ).sort("workload")
    total_input = int(df["input_tokens"].sum())
    p = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    return {
        "file": str(path),
        "block_size": block_size,
        "source": source.get("generator") or source.get("importer"),
        "requests": df.height,
        "sessions": per_session.height,
        "calls_per_session": {**_quantiles("len", {"p50": 0.5, "p90": 0.9}, per_session),
                              "max": int(per_session["len"].max() or 0)},
        "input_tokens": {"sum": total_input, **_quantiles("input_tokens", {"p50": 0.5, "p99": 0.99}, df)},
        "output_tokens": {"sum": int(df["output_tokens"].sum()),
                          **_quantiles("output_tokens", {"p50": 0.5, "p99": 0.99}, df)},
        "context_growth_tokens": _quantiles("growth", p, growth),
        # a root call has no parent to pause after: think time is over the calls that have one
        "think_s": _quantiles("think_s", p, df.filter(pl.col("parent_id").is_not_null())),
        "ideal_reuse": float(reuse["reused_tokens"].sum() / total_input) if total_input else 0.0,
        "ideal_reuse_by_workload": dict(by_workload.iter_rows()),
        "aiperf_hit_rate_unweighted": aiperf_hit_rate(lf, block_size),
    }
