"""Trace schema v1: the one place that says what a trace file holds.

One row per model call. Block hashes are stored in delta form (a prompt's full block list is
its parent's sequence cut to ``kept_blocks`` followed by ``new_block_hashes``) so a session of
n calls stays linear in size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pyarrow as pa

from conf import conf_file
from traces.errors import ConfigError, TraceError

__all__ = ["COLUMNS", "NULLABLE", "SCHEMA", "SCHEMA_VERSION", "SEGMENT_KINDS", "SEGMENT_TYPE",
           "SUPPORTED_VERSIONS", "ConfigError", "TraceError", "TraceMeta"]

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)

SEGMENT_TYPE = pa.struct([("kind", pa.string()), ("tokens", pa.int32())])

SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("request_id", pa.string()),
        ("parent_id", pa.string()),
        ("turn", pa.int32()),
        ("agent", pa.string()),
        ("workload", pa.string()),
        ("arrival_s", pa.float64()),
        ("think_s", pa.float64()),
        ("input_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("kept_blocks", pa.int32()),
        ("new_block_hashes", pa.list_(pa.uint64())),
        ("segments", pa.list_(SEGMENT_TYPE)),
        ("model", pa.string()),
        ("reported_cached_tokens", pa.int32()),
        ("reported_cache_write_tokens", pa.int32()),
        # recorded traces: the prompt-cache TTL the agent asked for (Claude Code's usage breakdown
        # tells 5-minute from 1-hour writes); null: the pricing config's default
        ("cache_ttl_s", pa.float64()),
    ]
)

COLUMNS = tuple(SCHEMA.names)
NULLABLE = frozenset({"parent_id", "model", "reported_cached_tokens", "reported_cache_write_tokens",
                      "cache_ttl_s"})

# What a prompt segment may be: the kinds DESIGN.md names, plus "unknown" for importers that only
# see token counts.
SEGMENT_KINDS = frozenset(
    {"system", "tools", "history", "user", "tool_result", "document", "summary", "unknown"}
)


@cache
def default_max_tokens() -> int:
    """The bound on one call's prompt or output tokens, from conf/limits.yaml."""
    return read_limits(conf_file("limits.yaml").read_text())["max_tokens"]


def read_limits(text: str) -> dict[str, int]:
    """conf/limits.yaml: ``name: integer`` lines and comments. Read line by line, not with
    PyYAML, whose import alone is ~25 ms of every `traces import` (issue 16 holds an import
    within 2x ccusage's time); anything else in the file is a ConfigError naming the line."""
    limits = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        name, colon, value = entry.partition(":")
        if not colon or not name.strip().isidentifier() or not value.strip().isdigit():
            raise ConfigError(f"conf/limits.yaml line {number}: expected 'name: integer', got {entry!r}")
        limits[name.strip()] = int(value)
    return limits


@dataclass(frozen=True)
class TraceMeta:
    """File-level metadata every trace carries."""

    block_size: int
    source: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def max_tokens(self) -> int:
        """The bound on one call's tokens this trace is checked against: conf/limits.yaml's, or
        the higher one it was imported with (``traces import --max-tokens``, kept in its source)."""
        declared = self.source.get("max_tokens")
        ok = isinstance(declared, int) and not isinstance(declared, bool)
        return max(default_max_tokens(), declared) if ok else default_max_tokens()

    def to_arrow(self) -> dict[bytes, bytes]:
        return {
            b"schema_version": str(self.schema_version).encode(),
            b"block_size": str(self.block_size).encode(),
            b"source": json.dumps(self.source, sort_keys=True).encode(),
        }

    @classmethod
    def from_arrow(cls, path: str, metadata: dict[bytes, bytes] | None) -> TraceMeta:
        """Parse and check the metadata keys; raise TraceError naming the file on any problem."""
        metadata = metadata or {}
        for key in (b"schema_version", b"block_size", b"source"):
            if key not in metadata:
                raise TraceError(f"{path}: not an agent-replay trace (metadata key "
                                 f"'{key.decode()}' missing)")
        def integer(key: str) -> int:
            try:
                return int(metadata[key.encode()])
            except (ValueError, OverflowError):
                raise TraceError(f"{path}: {key} is not an integer") from None

        version = integer("schema_version")
        if version not in SUPPORTED_VERSIONS:
            raise TraceError(f"{path}: unsupported schema_version {version} "
                             f"(this agent-replay reads {list(SUPPORTED_VERSIONS)})")
        block_size = integer("block_size")
        if block_size <= 0:
            raise TraceError(f"{path}: block_size must be > 0, got {block_size}")
        try:
            source = json.loads(metadata[b"source"])
        except ValueError:
            raise TraceError(f"{path}: source metadata is not JSON") from None
        if not isinstance(source, dict):
            raise TraceError(f"{path}: source metadata is JSON {type(source).__name__}, not an object")
        return cls(block_size=block_size, source=source, schema_version=version)
