"""Checks a trace file against schema v1 and its invariants, reporting every problem found.

Each problem is one line, ``FILE: row N (request_id X): column: reason`` (rows count from 0 in
file order), or ``FILE: column: reason`` for schema problems. A file we cannot read at all
raises TraceError instead: one clear line, exit code 1.
"""

from __future__ import annotations

import os

import polars as pl

from traces.errors import TraceError
from traces.io import read_meta, read_verified, reading, schema_problems
from traces.schema import SEGMENT_KINDS, TraceMeta


def validate(path: str | os.PathLike) -> list[str]:
    """All problems of the trace at ``path``; an empty list means it is valid. Page checksums
    are verified (files written by this project carry them), so damaged pages are a TraceError."""
    path = str(path)
    meta = read_meta(path)
    problems = schema_problems(path)
    if problems:
        return problems
    with reading(path):
        df = pl.from_arrow(read_verified(path))
        return [f"{path}: row {row} (request_id {rid}): {column}: {reason}"
                for row, rid, column, reason in _row_problems(df.with_row_index("row"), meta)]


def check_rows(path: str | os.PathLike, refused: str) -> None:
    """Raise one TraceError line naming the first bad row (and how many more) when the trace
    breaks a rule: the commands that compute on a trace (inspect, export, replay) never meet a
    null count, a negative length or a broken chain the schema's types allow. ``refused`` says
    what was not done (``not exported``)."""
    problems = validate(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TraceError(f"{refused}, the trace is invalid: {problems[0]}{more}; see traces validate")


def _show(column: str) -> pl.Expr:
    """A column as text for a reason, null shown as 'null' (a null would blank the whole reason)."""
    return pl.col(column).cast(pl.String).fill_null("null")


def _row_problems(df: pl.DataFrame, meta: TraceMeta) -> list[tuple[int, str, str, str]]:
    bs, max_tokens = meta.block_size, meta.max_tokens
    # a count past the bound would have every command hash and hold its blocks (2**31 output
    # tokens: 33M block hashes, half a minute) for a call no served model takes
    above = f"above the limit of {max_tokens:,} tokens (conf/limits.yaml; traces import --max-tokens)"
    parents = df.select(
        pl.col("request_id").alias("parent_id"),
        pl.col("session_id").alias("parent_session"),
        pl.col("turn").alias("parent_turn"),
        ((pl.col("input_tokens") + pl.col("output_tokens")) // bs).alias("parent_blocks"),
    ).unique("parent_id", keep="first")
    df = df.join(parents, on="parent_id", how="left", maintain_order="left")
    df = df.with_columns(
        n_new=pl.col("new_block_hashes").list.len(),
        # chained hashes name distinct prefixes, so one prompt never holds a hash twice; a run
        # of zeros or other garbage written over the hash data shows up as repeats
        hash_repeats=pl.col("new_block_hashes").list.n_unique() < pl.col("new_block_hashes").list.len(),
        seg_sum=pl.col("segments").list.eval(pl.element().struct.field("tokens")).list.sum(),
        seg_negative=pl.col("segments").list.eval(
            pl.element().struct.field("tokens") < 0).list.any(),
        seg_bad_kind=pl.col("segments").list.eval(
            ~pl.element().struct.field("kind").is_in(sorted(SEGMENT_KINDS))).list.any(),
        dup_id=pl.col("request_id").is_duplicated() & (pl.int_range(pl.len()).over("request_id") > 0),
        n_in_session=pl.len().over("session_id"),
        dup_turn=pl.col("turn").is_duplicated().over("session_id"),
    )
    # arrival of the previous turn, aligned back to each row
    df = df.with_columns(
        prev_arrival=pl.col("arrival_s").shift(1).over("session_id", order_by="turn")
    )
    rules: list[tuple[str, pl.Expr, pl.Expr]] = [
        ("request_id", pl.col("request_id").is_null(), pl.lit("is null")),
        ("request_id", pl.col("dup_id"), pl.lit("duplicate of an earlier row")),
        ("session_id", pl.col("session_id").is_null(), pl.lit("is null")),
        ("turn", pl.col("turn").is_null() | (pl.col("turn") < 0) |
         (pl.col("turn") >= pl.col("n_in_session")),
         pl.format("turn {} outside 0..{} (the session has {} calls)", _show("turn"),
                   pl.col("n_in_session") - 1, pl.col("n_in_session"))),
        ("turn", pl.col("dup_turn"), pl.format("turn {} appears twice in the session", pl.col("turn"))),
        ("parent_id", pl.col("parent_id").is_not_null() & pl.col("parent_session").is_null(),
         pl.format("parent {} not in the file", pl.col("parent_id"))),
        ("parent_id", pl.col("parent_session").is_not_null() &
         (pl.col("parent_session") != pl.col("session_id")),
         pl.format("parent {} belongs to session {}", pl.col("parent_id"), pl.col("parent_session"))),
        ("parent_id", pl.col("parent_turn").is_not_null() & (pl.col("parent_turn") >= pl.col("turn")),
         pl.format("parent {} is not an earlier call (turn {} >= {})", pl.col("parent_id"),
                   pl.col("parent_turn"), pl.col("turn"))),
        ("input_tokens", pl.col("input_tokens").is_null() | (pl.col("input_tokens") < 1),
         pl.format("{} < 1", _show("input_tokens"))),
        ("output_tokens", pl.col("output_tokens").is_null() | (pl.col("output_tokens") < 0),
         pl.format("{} < 0", _show("output_tokens"))),
        ("input_tokens", pl.col("input_tokens") > max_tokens, pl.format(f"{{}} is {above}", "input_tokens")),
        ("output_tokens", pl.col("output_tokens") > max_tokens,
         pl.format(f"{{}} is {above}", "output_tokens")),
        ("think_s", pl.col("think_s").is_null() | pl.col("think_s").is_nan() | (pl.col("think_s") < 0),
         pl.format("{} is not a duration >= 0", _show("think_s"))),
        ("think_s", pl.col("think_s").is_infinite(), pl.lit("is infinite")),
        ("arrival_s", pl.col("arrival_s").is_null() | pl.col("arrival_s").is_nan()
         | pl.col("arrival_s").is_infinite(), pl.format("{} is not a finite number", _show("arrival_s"))),
        ("arrival_s", pl.col("prev_arrival").is_not_null() & (pl.col("arrival_s") < pl.col("prev_arrival")),
         pl.format("{} is before the previous turn's {}", pl.col("arrival_s"), pl.col("prev_arrival"))),
        ("kept_blocks", pl.col("kept_blocks").is_null() | (pl.col("kept_blocks") < 0),
         pl.format("{} < 0", _show("kept_blocks"))),
        ("kept_blocks", pl.col("parent_id").is_null() & (pl.col("kept_blocks") > 0),
         pl.format("{} but the call has no parent", pl.col("kept_blocks"))),
        ("kept_blocks", pl.col("parent_blocks").is_not_null() &
         (pl.col("kept_blocks") > pl.col("parent_blocks")),
         pl.format("{} exceeds the parent's {} blocks (prompt plus output)", pl.col("kept_blocks"),
                   pl.col("parent_blocks"))),
        ("new_block_hashes", pl.col("new_block_hashes").is_null(), pl.lit("is null")),
        ("new_block_hashes", (pl.col("kept_blocks") + pl.col("n_new")) != pl.col("input_tokens") // bs,
         pl.format("kept_blocks {} + {} new hashes != input_tokens {} // block_size {}",
                   pl.col("kept_blocks"), pl.col("n_new"), pl.col("input_tokens"), pl.lit(bs))),
        ("new_block_hashes", pl.col("hash_repeats"),
         pl.lit("a hash appears twice in one prompt (chained hashes cannot repeat: damaged hash data)")),
        ("reported_cached_tokens", pl.col("reported_cached_tokens") < 0,
         pl.format("{} < 0", pl.col("reported_cached_tokens"))),
        ("reported_cache_write_tokens", pl.col("reported_cache_write_tokens") < 0,
         pl.format("{} < 0", pl.col("reported_cache_write_tokens"))),
        ("cache_ttl_s", pl.col("cache_ttl_s").is_nan() | pl.col("cache_ttl_s").is_infinite()
         | (pl.col("cache_ttl_s") <= 0), pl.format("{} is not a duration > 0", pl.col("cache_ttl_s"))),
        ("segments", pl.col("seg_negative").fill_null(False), pl.lit("a segment has negative tokens")),
        ("segments", pl.col("seg_bad_kind").fill_null(False),
         pl.lit(f"unknown segment kind (known: {', '.join(sorted(SEGMENT_KINDS))})")),
        ("segments", pl.col("seg_sum").fill_null(0) != pl.col("input_tokens"),
         pl.format("tokens sum to {}, not input_tokens {}", pl.col("seg_sum").fill_null(0),
                   pl.col("input_tokens"))),
    ]
    found = []
    for column, condition, reason in rules:
        hits = df.filter(condition.fill_null(False)).select(
            "row", pl.col("request_id").fill_null("null"), reason.alias("reason"))
        found.extend((row, rid, column, why) for row, rid, why in hits.iter_rows())
    found.sort(key=lambda p: p[0])
    return found
