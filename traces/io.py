"""Parquet IO for traces: a streaming writer with bounded memory and lazy polars readers.

The writer builds Arrow columns from plain Python lists (and numpy arrays for the hashes) one
row group at a time, writes to ``FILE.partial`` and renames on success, so a crash or Ctrl-C
never leaves a half-written trace under the real name, and a failure removes the ``.partial``.
Pages carry checksums. Readers check the metadata and the schema first; ``reading`` and
``writing`` turn what damaged files and bad output paths raise into one TraceError line.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from types import NoneType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import polars as pl

from traces.schema import SCHEMA, SEGMENT_TYPE, TraceError, TraceMeta

# What reading a damaged or foreign file can raise, turned into one TraceError line by ``reading``.
READ_ERRORS = (pa.ArrowException, OSError, OverflowError, UnicodeDecodeError)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged trace raises, polars' errors included: polars is imported only
    when an error is being handled (an importer writing a trace never loads it)."""
    import polars as pl

    return (*READ_ERRORS, pl.exceptions.PolarsError)

DEFAULT_ROW_GROUP = 65_536


class RowBuffer:
    """Columns of pending rows; ``new_block_hashes`` as numpy arrays, segments as (kind, tokens)."""

    SCALARS = tuple(n for n in SCHEMA.names if n not in ("new_block_hashes", "segments"))

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in self.SCALARS}
        self.hashes: list[np.ndarray] = []
        self.segments: list[list[tuple[str, int]]] = []

    def __len__(self) -> int:
        return len(self.hashes)

    def add(self, new_block_hashes: np.ndarray, segments: list[tuple[str, int]], **row: Any) -> None:
        cols = self.cols
        for name in self.SCALARS:
            cols[name].append(row.get(name))
        self.hashes.append(new_block_hashes)
        self.segments.append(segments)

    def to_table(self) -> pa.Table:
        arrays = []
        for field in SCHEMA:
            if field.name == "new_block_hashes":
                arrays.append(_list_array(self.hashes, pa.uint64()))
            elif field.name == "segments":
                arrays.append(_segments_array(self.segments))
            else:
                arrays.append(_scalar_array(self.cols[field.name], field.type))
        return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _scalar_array(values: list[Any], value_type: pa.DataType) -> pa.Array:
    """A string, int32 or float64 column from a list (None: null), over numpy buffers. Not
    ``pa.array``: its first call imports pandas where it is installed (~0.4 s of every command
    that writes a trace). A list holding anything but str, int or float (and None) goes
    through ``pa.array`` all the same, so what it refuses, and how, is unchanged."""
    kinds = set(map(type, values))
    nulls = values.count(None)
    valid = np.fromiter(map(operator.is_not, values, repeat(None)), bool, len(values)) if nulls else None
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    try:
        if pa.types.is_string(value_type) and kinds <= {str, NoneType}:
            data = [b"" if v is None else v.encode() for v in values]
            offsets = np.zeros(len(data) + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, data), np.int64, len(data)), out=offsets[1:])
            if offsets[-1] < 2**31:
                return pa.Array.from_buffers(value_type, len(data), [
                    bitmap, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(data))], nulls)
        elif pa.types.is_int32(value_type) and kinds <= {int, NoneType}:
            numbers = np.array(values, dtype=np.float64)  # None -> NaN; int32 values are exact
            held = numbers if valid is None else numbers[valid]
            if not len(held) or (held.min() >= -(2**31) and held.max() < 2**31):
                return _from_numpy(np.nan_to_num(numbers), value_type, bitmap, nulls)
        elif pa.types.is_float64(value_type) and kinds <= {float, NoneType}:
            return _from_numpy(np.array(values, dtype=np.float64), value_type, bitmap, nulls)
    except (UnicodeEncodeError, OverflowError):  # a lone surrogate, an int past float64's range
        pass
    return pa.array(values, type=value_type)


def _list_array(parts: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int32, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(parts) if parts else np.empty(0, np.uint64)
    return pa.ListArray.from_arrays(_from_numpy(offsets, pa.int32()), _from_numpy(values, value_type))


def _from_numpy(values: np.ndarray, value_type: pa.DataType, validity: pa.Buffer | None = None,
                nulls: int = 0) -> pa.Array:
    """An Arrow array over a contiguous numpy array's buffer (null where ``validity`` says). Not
    ``pa.array(values)``: its first call imports numpy.ma (~0.05 s of an import command's
    start-up), and pandas where it is installed (~0.4 s)."""
    values = np.ascontiguousarray(values, dtype=value_type.to_pandas_dtype())
    return pa.Array.from_buffers(value_type, len(values), [validity, pa.py_buffer(values)], nulls)


def _segments_array(rows: list[list[tuple[str, int]]]) -> pa.Array:
    flat = [seg for row in rows for seg in row]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    structs = pa.StructArray.from_arrays(
        [_scalar_array([k for k, _ in flat], pa.string()), _scalar_array([t for _, t in flat], pa.int32())],
        fields=list(SEGMENT_TYPE),
    )
    return pa.ListArray.from_arrays(_from_numpy(offsets, pa.int32()), structs)


class TraceWriter:
    """Streams rows into a trace file one row group at a time.

    Use as a context manager: the file appears under its name only when the block exits without
    an exception.
    """

    def __init__(self, path: str | os.PathLike, meta: TraceMeta, row_group_rows: int = DEFAULT_ROW_GROUP,
                 check: Callable[[Path], None] | None = None):
        """``check``: called with the complete ``.partial`` file before it is renamed; raising
        TraceError there leaves nothing behind (importers pass the validator)."""
        self.path = Path(path)
        self.check = check
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.meta = meta
        self.row_group_rows = row_group_rows
        self.buffer = RowBuffer()
        self.rows_written = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> TraceWriter:
        if self.path.is_dir():
            raise TraceError(f"{self.path}: is a folder; give a file name to write")
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            schema = SCHEMA.with_metadata(self.meta.to_arrow())
            # page checksums let `traces validate` tell a damaged file from a bad trace
            self._writer = pq.ParquetWriter(self.partial, schema, compression="zstd",
                                            write_page_checksum=True)
        return self

    def add(self, new_block_hashes: np.ndarray, segments: list[tuple[str, int]], **row: Any) -> None:
        self.buffer.add(new_block_hashes, segments, **row)
        if len(self.buffer) >= self.row_group_rows:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Append an already-built table (importers, tests)."""
        self.flush()
        assert self._writer is not None
        self._writer.write_table(table.cast(SCHEMA.with_metadata(self.meta.to_arrow())))
        self.rows_written += table.num_rows

    def flush(self) -> None:
        if len(self.buffer) == 0:
            return
        assert self._writer is not None
        self._writer.write_table(self.buffer.to_table())
        self.rows_written += len(self.buffer)
        self.buffer.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        """Flush, close and rename; if anything fails (here or in the block) the ``.partial``
        file is removed and the error goes on."""
        assert self._writer is not None
        try:
            try:
                if exc_type is None:
                    with writing(self.path):
                        self.flush()
            finally:
                with writing(self.path):
                    self._writer.close()
            if exc_type is None:
                if self.check is not None:
                    self.check(self.partial)
                with writing(self.path):
                    os.replace(self.partial, self.path)
        finally:
            discard(self.partial)


def discard(partial: Path) -> None:
    """Remove a temporary file if it is there (its folder may not even exist)."""
    try:
        partial.unlink()
    except (FileNotFoundError, NotADirectoryError):
        pass


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (read-only, under a file, disk full) into one line."""
    try:
        yield
    except OSError as exc:
        above = next((p for p in Path(path).absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise TraceError(f"{path}: cannot write ({above} is a file, not a folder)") from None
        reason = exc.strerror or str(exc).splitlines()[0]
        raise TraceError(f"{path}: cannot write ({exc.filename or path}: {reason})") from None


@contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn what reading a damaged trace raises (bad pages, wrong types, I/O) into one line."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, _read_errors()):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path}: cannot read ({first[:200]})") from None


def write_table(path: str | os.PathLike, table: pa.Table, meta: TraceMeta) -> None:
    """Write a whole in-memory table as a trace (small traces, tests)."""
    with TraceWriter(path, meta) as writer:
        writer.write_table(table)


def _open(path: str | os.PathLike) -> pq.ParquetFile:
    path = str(path)
    if not os.path.exists(path):
        raise TraceError(f"{path}: no such file")
    if os.path.isdir(path):
        raise TraceError(f"{path}: is a folder, not a trace file")
    try:
        pf = pq.ParquetFile(path)
        pf.schema_arrow  # noqa: B018 - a damaged footer schema fails here, not in the caller
        return pf
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # flipped bytes in the footer
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceError(f"{path}: not a readable Parquet file ({first})") from None


def read_meta(path: str | os.PathLike) -> TraceMeta:
    """The trace's metadata, checked; raises TraceError for files we cannot use."""
    pf = _open(path)
    for metadata in (pf.metadata.metadata, pf.schema_arrow.metadata):  # the footer's, its Arrow schema's copy
        _check_text(path, metadata)
    return TraceMeta.from_arrow(str(path), pf.schema_arrow.metadata)


def _check_text(path: str | os.PathLike, metadata: dict[bytes, bytes] | None) -> None:
    """Key-value metadata is text: other bytes (a damaged footer) panic polars as it reads."""
    for key, value in (metadata or {}).items():
        try:
            key.decode(), value.decode()
        except UnicodeDecodeError:
            raise TraceError(f"{path}: footer metadata {key.decode(errors='replace')!r} is not UTF-8 text "
                             "(a damaged file?)") from None


def row_count(path: str | os.PathLike) -> int:
    """Rows of the file, from its footer (nothing read)."""
    return _open(path).metadata.num_rows


def arrow_schema(path: str | os.PathLike) -> pa.Schema:
    return _open(path).schema_arrow


def schema_problems(path: str | os.PathLike) -> list[str]:
    """Columns missing or of the wrong type, one line each (empty: the schema is v1's)."""
    schema = arrow_schema(path)
    problems = []
    for field in SCHEMA:
        if field.name not in schema.names:
            problems.append(f"{path}: {field.name}: column missing")
        elif not schema.field(field.name).type.equals(field.type):
            problems.append(f"{path}: {field.name}: type {schema.field(field.name).type}, "
                            f"expected {field.type}")
    return problems


def check_schema(path: str | os.PathLike) -> TraceMeta:
    """The metadata, after checking that the columns are schema v1's; TraceError otherwise."""
    meta = read_meta(path)
    problems = schema_problems(path)
    if problems:
        more = f" (and {len(problems) - 1} more; run traces validate)" if len(problems) > 1 else ""
        raise TraceError(problems[0] + more)
    return meta


def scan(path: str | os.PathLike) -> pl.LazyFrame:
    """A lazy polars view of a trace, after checking that it is one with schema v1's columns.
    Collect it inside ``reading(path)`` to turn damaged pages into one line."""
    import polars as pl

    check_schema(path)
    return pl.scan_parquet(str(path))


def read_table(path: str | os.PathLike) -> pa.Table:
    """The whole trace as an Arrow table (small traces, tests)."""
    read_meta(path)
    with reading(path):
        return read_verified(path)


def read_verified(path: str | os.PathLike) -> pa.Table:
    """Read every row group with page checksums verified (call inside ``reading``). Through
    ParquetFile, not ``pq.read_table``: that loads pyarrow.dataset and pyarrow.compute (~0.07 s
    of a command's start-up) to read one file."""
    with pq.ParquetFile(str(path), page_checksum_verification=True) as f:
        return f.read()
