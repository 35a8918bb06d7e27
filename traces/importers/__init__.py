"""Importers for the trace formats people already have; each returns parsed calls that
``common.write_trace`` turns into a trace file."""

from __future__ import annotations

import os
from types import ModuleType

from traces.importers import azure, bailian, claude_code, codex, mooncake, weka
from traces.importers.common import Problems, write_trace

FORMATS: dict[str, ModuleType] = {
    "mooncake": mooncake, "bailian": bailian, "weka": weka, "claude-code": claude_code,
    "codex": codex, "azure": azure,
}


def import_trace(fmt: str, paths: list[str], out: str | os.PathLike, block_size: int | None = None,
                 strict: bool = False, max_tokens: int | None = None) -> tuple[int, Problems]:
    """Parse ``paths`` in format ``fmt`` and write the trace ``out``; returns (calls, problems).
    ``max_tokens``: the bound on one call's tokens (default: conf/limits.yaml)."""
    module = FORMATS[fmt]
    bs = int(block_size or module.DEFAULT_BLOCK_SIZE)
    problems = Problems(strict=strict, **({"max_tokens": max_tokens} if max_tokens else {}))
    calls = module.parse(list(paths), bs, problems)
    source = {"importer": fmt, "inputs": [str(p) for p in paths], "block_size": bs}
    if getattr(module, "NOTE", None):
        source["note"] = module.NOTE
    written = write_trace(out, calls, bs, module.WORKLOAD, source, problems)
    return written, problems
