"""Export a trace as AIPerf-compatible Mooncake JSONL, so the same calls can drive AIPerf or
Dynamo against a real server: {timestamp (ms), input_length, output_length, hash_ids,
session_id, delay (ms, the think time of a call that continues its session)}."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl

from traces.expand import expand
from traces.hashing import reblock
from traces.io import discard, read_meta, reading, scan, writing
from traces.schema import TraceError
from traces.validate import check_rows


def export_mooncake(path: str | os.PathLike, out: str | os.PathLike, block_size: int = 512) -> int:
    """Write ``out``; returns the number of calls. ``block_size`` must be a multiple of the
    trace's (ids are every k-th chained hash, so equal id still means equal prefix). The trace
    is validated first: another tool gets no NaN timestamp, broken parent or duplicate id."""
    meta = read_meta(path)
    if block_size % meta.block_size:
        raise TraceError(f"--block-size {block_size} is not a multiple of the trace's {meta.block_size}")
    check_rows(path, "not exported")
    factor = block_size // meta.block_size
    with reading(path):
        blocks = {rid: reblock(b, factor) for rid, b in expand(path)}
        rows = scan(path).select("session_id", "request_id", "parent_id", "arrival_s", "think_s",
                                 "input_tokens", "output_tokens").with_row_index("row")
        rows = rows.sort("arrival_s", "row").collect()
    out = Path(out)
    if out.is_dir():
        raise TraceError(f"{out}: is a folder; give a file name to write")
    partial = out.with_name(out.name + ".partial")
    try:
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            _write_lines(partial, rows, blocks)
            os.replace(partial, out)
    finally:
        discard(partial)
    return rows.height


def _write_lines(partial: Path, rows: pl.DataFrame, blocks: dict[str, np.ndarray]) -> None:
    """One Mooncake JSON object per call, in arrival order."""
    with partial.open("w") as f:
        for r in rows.iter_rows(named=True):
            line = {"timestamp": int(round(r["arrival_s"] * 1000)), "input_length": r["input_tokens"],
                    "output_length": r["output_tokens"],
                    "hash_ids": [int(h) for h in blocks[r["request_id"]]], "session_id": r["session_id"]}
            if r["parent_id"] is not None:
                line["delay"] = int(round(r["think_s"] * 1000))
            f.write(json.dumps(line) + "\n")
