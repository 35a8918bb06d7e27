"""Builds small hand-written traces for tests: rows as dicts, defaults for what a test ignores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from traces.io import write_table
from traces.schema import SCHEMA, TraceMeta


def row(session_id: str, turn: int, input_tokens: int, new: list[int], *, parent: str | None = None,
        kept: int = 0, output_tokens: int = 0, arrival_s: float = 0.0, think_s: float = 0.0,
        workload: str = "test", agent: str = "main", **extra: Any) -> dict[str, Any]:
    """One request; request_id is session-turn and segments are one 'user' segment."""
    base = {
        "session_id": session_id,
        "request_id": f"{session_id}-{turn}",
        "parent_id": parent,
        "turn": turn,
        "agent": agent,
        "workload": workload,
        "arrival_s": arrival_s,
        "think_s": think_s,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "kept_blocks": kept,
        "new_block_hashes": new,
        "segments": [{"kind": "user", "tokens": input_tokens}],
        "model": None,
        "reported_cached_tokens": None,
        "reported_cache_write_tokens": None,
        "cache_ttl_s": None,
    }
    base.update(extra)
    return base


def table(rows: list[dict[str, Any]], schema: pa.Schema = SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def write(path: Path, rows: list[dict[str, Any]], block_size: int = 4) -> Path:
    write_table(path, table(rows), TraceMeta(block_size=block_size, source={"test": path.name}))
    return path
