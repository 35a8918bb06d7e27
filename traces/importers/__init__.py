"""Importers for the trace formats people already have; each returns parsed calls that
``common.write_trace`` turns into a trace file."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from traces.importers.common import Problems, write_trace

# format -> module, imported when used: one import need not load every parser (azure's CSV
# reader costs ~0.15 s of start-up)
FORMATS: dict[str, str] = {
    "mooncake": "mooncake", "bailian": "bailian", "weka": "weka", "claude-code": "claude_code",
    "codex": "codex", "azure": "azure",
}


def format_module(fmt: str) -> ModuleType:
    return importlib.import_module(f"traces.importers.{FORMATS[fmt]}")


def import_trace(fmt: str, paths: list[str], out: str | os.PathLike, block_size: int | None = None,
                 strict: bool = False, max_tokens: int | None = None) -> tuple[int, Problems]:
    """Parse ``paths`` in format ``fmt`` and write the trace ``out``; returns (calls, problems).
    ``max_tokens``: the bound on one call's tokens (default: conf/limits.yaml)."""
    module = format_module(fmt)
    bs = int(block_size or module.DEFAULT_BLOCK_SIZE)
    problems = Problems(strict=strict, **({"max_tokens": max_tokens} if max_tokens else {}))
    calls = module.parse(list(paths), bs, problems)
    source = {"importer": fmt, "inputs": [str(p) for p in paths], "block_size": bs}
    if getattr(module, "NOTE", None):
        source["note"] = module.NOTE
    written = write_trace(out, calls, bs, module.WORKLOAD, source, problems)
    return written, problems
