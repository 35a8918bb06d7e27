"""Agent-session traces: the schema, Parquet IO, validation, expansion, generators, importers."""

from traces.expand import BlockExpander, expand
from traces.io import TraceWriter, read_meta, read_table, scan, write_table
from traces.schema import SCHEMA, SCHEMA_VERSION, TraceError, TraceMeta
from traces.stats import inspect
from traces.validate import validate

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "BlockExpander", "TraceError", "TraceMeta", "TraceWriter",
    "expand", "inspect", "read_meta", "read_table", "scan", "validate", "write_table",
]
