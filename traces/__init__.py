"""Agent-session traces: the schema, Parquet IO, validation, expansion, generators, importers.

The names below load their modules on first use (PEP 562), so `import traces` (and the
`traces` command's --help) does not pay for pyarrow and polars. The validator is
``traces.validate.validate``: a lazy ``traces.validate`` would be the function or the submodule
depending on what was imported first.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "SCHEMA": "traces.schema", "SCHEMA_VERSION": "traces.schema", "TraceMeta": "traces.schema",
    "TraceError": "traces.errors", "BlockExpander": "traces.expand", "expand": "traces.expand",
    "TraceWriter": "traces.io", "read_meta": "traces.io", "read_table": "traces.io", "scan": "traces.io",
    "write_table": "traces.io", "inspect": "traces.stats",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
