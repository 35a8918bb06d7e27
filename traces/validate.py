"""Checks a trace file against schema v1 and its invariants, reporting every problem found.

Each problem is one line, ``FILE: row N (request_id X): column: reason`` (rows count from 0 in
file order), or ``FILE: column: reason`` for schema problems. A file we cannot read at all
raises TraceError instead: one clear line, exit code 1.

The row rules run on numpy arrays over the Arrow buffers, not on polars: every import validates
its output before renaming it into place, and importing polars alone costs an import command
~0.2 s of start-up. They keep the wording and the null semantics the polars version had: a rule
that compares a null value finds nothing (unless the rule is about the null), nulls of one column
form one group (two null request_ids are a duplicate, null session_ids one session), values show
as ``null``, ``NaN``, ``inf``, ``-inf`` and floats as polars cast them to text (``1e-7``,
``0.00001``). Where polars was wrong this is not: a null turn that repeats in its session reads
``turn null appears twice`` (polars blanked the reason to ``None``); sums of int32 counts do not
wrap (polars' int32 sums of segment tokens, or of a parent's input and output tokens, could wrap
past 2**31 into a wrong block count or a sum that matched by chance); a block_size of 2**64 or
more divides (polars gave null, which skipped the block-count rules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import pyarrow as pa

from traces.errors import TraceError
from traces.io import read_meta, read_verified, reading, schema_problems
from traces.schema import SEGMENT_KINDS, TraceMeta

# A turn key below every int32: null turns sort first in a session, as polars' order_by put them.
NULL_TURN = -(2**31) - 1


def validate(path: str | os.PathLike) -> list[str]:
    """All problems of the trace at ``path``; an empty list means it is valid. Page checksums
    are verified (files written by this project carry them), so damaged pages are a TraceError."""
    path = str(path)
    meta = read_meta(path)
    problems = schema_problems(path)
    if problems:
        return problems
    with reading(path):
        return [f"{path}: row {row} (request_id {rid}): {column}: {reason}"
                for row, rid, column, reason in _row_problems(read_verified(path), meta)]


def check_rows(path: str | os.PathLike, refused: str) -> None:
    """Raise one TraceError line naming the first bad row (and how many more) when the trace
    breaks a rule: the commands that compute on a trace (inspect, export, replay) never meet a
    null count, a negative length or a broken chain the schema's types allow. ``refused`` says
    what was not done (``not exported``)."""
    problems = validate(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TraceError(f"{refused}, the trace is invalid: {problems[0]}{more}; see traces validate")


@dataclass(frozen=True)
class Col:
    """One column as numpy: ``values`` (anything where the row is null) and ``valid`` (False
    there), so that every rule says what a null does instead of meeting a NaN or a zero."""

    values: np.ndarray
    valid: np.ndarray

    def take(self, rows: np.ndarray, found: np.ndarray) -> Col:
        """The values at ``rows``, null where ``found`` is False (a parent not in the file)."""
        rows = np.where(found, rows, 0)
        return Col(self.values[rows], self.valid[rows] & found)

    def texts(self, rows: np.ndarray) -> list[str]:
        """The values at ``rows`` as a reason shows them: null as 'null' (polars' format would
        blank the whole reason), floats as polars wrote them, integers and strings as they are."""
        show = _float_text if self.values.dtype.kind == "f" else str
        values, valid = self.values[rows].tolist(), self.valid[rows].tolist()
        return [show(value) if set_ else "null" for value, set_ in zip(values, valid, strict=True)]


def _float_text(value: float) -> str:
    """A float as polars' cast to text wrote it, so reasons read as they always did: Python's
    repr, except NaN, and exponents -5 to -9 (repr ``1e-05``, ``1e-07``; polars ``0.00001``,
    ``1e-7``)."""
    if value != value:
        return "NaN"
    mantissa, small, exponent = repr(value).partition("e-0")
    if not small:
        return mantissa
    if exponent == "5":
        sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
        return f"{sign}0.0000{digits.replace('.', '')}"
    return f"{mantissa}e-{exponent}"


def _valid(arr: pa.Array) -> np.ndarray:
    """The array's validity bitmap as booleans. Not ``arr.is_null()``: that loads
    pyarrow.compute (~0.07 s of an import command's start-up)."""
    bitmap = arr.buffers()[0]
    if bitmap is None or arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[arr.offset:arr.offset + len(arr)].astype(bool)


def _numbers(arr: pa.Array, dtype: type[np.generic]) -> np.ndarray:
    """The data buffer of a fixed-width array, null slots holding whatever the writer left."""
    if len(arr) == 0:
        return np.zeros(0, dtype=dtype)
    data = np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + len(arr))
    return data[arr.offset:]


def _column(table: pa.Table, name: str) -> Col:
    """A scalar column: numbers from their buffer, strings as Python objects (None where null).
    Schema v1's scalars are strings, int32 and float64. Not ``to_numpy()``: it imports pandas
    where it is installed (~0.4 s)."""
    arr = table.column(name).combine_chunks()
    if pa.types.is_string(arr.type):
        return Col(np.fromiter(arr.to_pylist(), dtype=object, count=len(arr)), _valid(arr))
    return Col(_numbers(arr, np.float64 if pa.types.is_float64(arr.type) else np.int32), _valid(arr))


def _first_rows(keys: np.ndarray) -> tuple[np.ndarray, dict[object, int]]:
    """For each row the first row holding the same key, and that lookup as a dict. Nulls (None)
    are one key, as polars grouped them. A dict filled at C speed: no sort of Python strings."""
    first: dict[object, int] = {}
    rows = np.fromiter(map(first.setdefault, keys, range(len(keys))), dtype=np.int64, count=len(keys))
    return rows, first


def _less(a: Col, b: Col) -> np.ndarray:
    """``a < b`` where both are set, in polars' float order: NaN above everything, inf included."""
    return a.valid & b.valid & ((a.values < b.values) | (~np.isnan(a.values) & np.isnan(b.values)))


def _sessions(session: np.ndarray, turn: Col, arrival: Col) -> tuple[np.ndarray, np.ndarray, Col]:
    """Per row: the calls in its session, whether its turn (a null included, as polars counted
    it) is another row's in the session, and the arrival of the turn before it. ``session`` holds
    one number per session; turns order a session, nulls first, ties in file order, as polars'
    ``shift(1).over("session_id", order_by="turn")`` did."""
    n = len(session)
    key = np.where(turn.valid, turn.values.astype(np.int64), NULL_TURN)
    order = np.lexsort((key, session))
    same = session[order[1:]] == session[order[:-1]]
    twice = same & (key[order[1:]] == key[order[:-1]])
    dup = np.zeros(n, dtype=bool)
    dup[order[1:][twice]] = True
    dup[order[:-1][twice]] = True
    prev = np.zeros(n, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    has_prev = np.zeros(n, dtype=bool)
    has_prev[order[1:][same]] = True
    return np.bincount(session, minlength=n)[session], dup, arrival.take(prev, has_prev)


def _parents(first_of: dict[object, int], pid: Col, sid: Col, session: np.ndarray, turn: Col,
             blocks: Col) -> tuple[Col, Col, Col, np.ndarray]:
    """Each row's parent, the first row of its request_id (``first_of``) as polars' join found
    it, a null parent_id matching nothing: the parent's session, turn and blocks (prompt plus
    output), null where there is no parent, and whether the parent's session is not the row's."""
    parent_row = np.fromiter(map(first_of.get, pid.values, repeat(-1)), dtype=np.int64,
                             count=len(session))
    found = pid.valid & (parent_row >= 0)
    parent_session = sid.take(parent_row, found)
    other_session = parent_session.valid & sid.valid & (session[parent_row] != session)
    return parent_session, turn.take(parent_row, found), blocks.take(parent_row, found), other_session


@dataclass(frozen=True)
class Lists:
    """A list column's layout: which lists are set, their offsets into the child array, and for
    each element in ``values[lo:hi]`` its row, with ``kept`` False for elements of a null list."""

    valid: np.ndarray
    offsets: np.ndarray
    owner: np.ndarray
    kept: np.ndarray

    @property
    def lo(self) -> int:
        return int(self.offsets[0])

    @property
    def hi(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> Col:
        """How many elements each list holds; null for a null list, as polars' list.len()."""
        return Col(np.diff(self.offsets), self.valid)

    def any(self, hits: np.ndarray) -> np.ndarray:
        """Rows with at least one element flagged in ``hits`` (those of null lists never count)."""
        return np.bincount(self.owner[hits & self.kept], minlength=len(self.valid)) > 0


def _lists(arr: pa.ListArray) -> Lists:
    """The layout of a list column, from its offsets (elements stay in the child array)."""
    valid = _valid(arr)
    buffer = arr.buffers()[1]  # not arr.offsets.to_numpy(): that imports pandas where installed
    offsets = np.zeros(1, dtype=np.int64) if buffer is None else np.frombuffer(
        buffer, dtype=np.int32, count=arr.offset + len(arr) + 1)[arr.offset:].astype(np.int64)
    owner = np.repeat(np.arange(len(arr)), np.diff(offsets))
    return Lists(valid, offsets, owner, valid[owner])


def _hash_repeats(arr: pa.ListArray, lists: Lists) -> np.ndarray:
    """Rows whose hash list holds a value twice: chained hashes name distinct prefixes, so one
    prompt never holds a hash twice; a run of zeros or other garbage written over the hash data
    shows up as repeats. Two nulls are a repeat too, as polars' n_unique counted them."""
    values = _numbers(arr.values, np.uint64)[lists.lo:lists.hi][lists.kept]
    present = _valid(arr.values)[lists.lo:lists.hi][lists.kept]
    owner = lists.owner[lists.kept]
    repeats = np.bincount(owner[~present], minlength=len(lists.valid)) >= 2
    values, owner = values[present], owner[present]
    # (row, high 32 bits) as one uint64 sorts ~10x faster than an argsort of the hashes; only
    # the rows where such a pair repeats (a repeat, or two hashes alike in their high half) need
    # the full comparison, and a valid trace has next to none
    pairs = (owner.astype(np.uint64) << np.uint64(32)) | (values >> np.uint64(32))
    ordered = np.sort(pairs)
    suspect = np.zeros(len(lists.valid), dtype=bool)
    suspect[(ordered[1:][ordered[1:] == ordered[:-1]] >> np.uint64(32)).astype(np.int64)] = True
    pick = suspect[owner]
    pairs, low = pairs[pick], values[pick] & np.uint64(0xFFFFFFFF)
    order = np.lexsort((low, pairs))
    pairs, low = pairs[order], low[order]
    twice = (pairs[1:] == pairs[:-1]) & (low[1:] == low[:-1])
    repeats[(pairs[1:][twice] >> np.uint64(32)).astype(np.int64)] = True
    return repeats


def _segments(arr: pa.ListArray) -> tuple[Col, np.ndarray, np.ndarray]:
    """Per row: the segments' token sum (0 for a null list, null tokens skipped), whether a
    segment has negative tokens, whether one has a kind not in SEGMENT_KINDS (a null kind or
    segment is neither, as polars' is_in left it null)."""
    lists = _lists(arr)
    struct = arr.values
    kind, tokens = struct.field("kind"), struct.field("tokens")
    present = _valid(struct)[lists.lo:lists.hi] & lists.kept
    counted = present & _valid(tokens)[lists.lo:lists.hi]
    amount = np.where(counted, _numbers(tokens, np.int32)[lists.lo:lists.hi], 0).astype(np.int64)
    running = np.concatenate(([0], np.cumsum(amount)))
    sums = running[lists.offsets[1:] - lists.lo] - running[lists.offsets[:-1] - lists.lo]
    names = kind.slice(lists.lo, lists.hi - lists.lo).to_pylist()
    known = np.fromiter(map(SEGMENT_KINDS.__contains__, names), dtype=bool, count=len(names))
    unknown = present & _valid(kind)[lists.lo:lists.hi] & ~known
    return Col(sums, np.ones(len(arr), dtype=bool)), lists.any(counted & (amount < 0)), lists.any(unknown)


def _negative(col: Col) -> np.ndarray:
    """Rows holding a count below zero (a null count is allowed here)."""
    return col.valid & (col.values < 0)


# A rule: the column it is about, the rows that break it, the reason with {} for each value shown.
Rule = tuple[str, np.ndarray, str, tuple[Col, ...]]


def _row_problems(table: pa.Table, meta: TraceMeta) -> list[tuple[int, str, str, str]]:
    """(row, request_id, column, reason) for each broken rule, by row, then in rule order."""
    bs, max_tokens = meta.block_size, meta.max_tokens
    # a count past the bound would have every command hash and hold its blocks (2**31 output
    # tokens: 33M block hashes, half a minute) for a call no served model takes
    above = f"above the limit of {max_tokens:,} tokens (conf/limits.yaml; traces import --max-tokens)"
    # a sum of two int32 counts lies within +-2**32: dividing it by 2**33 or by any larger
    # block_size gives the same, and numpy cannot hold a block_size past 2**63
    divisor = min(bs, 2**33)
    n = table.num_rows
    c = {name: _column(table, name) for name in (
        "session_id", "request_id", "parent_id", "turn", "arrival_s", "think_s", "input_tokens",
        "output_tokens", "kept_blocks", "reported_cached_tokens", "reported_cache_write_tokens",
        "cache_ttl_s")}
    rid, sid, pid, turn = c["request_id"], c["session_id"], c["parent_id"], c["turn"]
    inp, out, kept, arrival = c["input_tokens"], c["output_tokens"], c["kept_blocks"], c["arrival_s"]
    think, ttl = c["think_s"], c["cache_ttl_s"]
    yes = np.ones(n, dtype=bool)

    first_rid, first_of = _first_rows(rid.values)
    session, _ = _first_rows(sid.values)
    dup_id = first_rid != np.arange(n)
    in_session, dup_turn, prev_arrival = _sessions(session, turn, arrival)
    n_in_session, last_turn = Col(in_session, yes), Col(in_session - 1, yes)

    blocks = Col((inp.values.astype(np.int64) + out.values) // divisor, inp.valid & out.valid)
    parent_session, parent_turn, parent_blocks, other_session = _parents(
        first_of, pid, sid, session, turn, blocks)

    hashes = table.column("new_block_hashes").combine_chunks()
    hash_lists = _lists(hashes)
    n_new = hash_lists.lengths()
    seg_sum, seg_negative, seg_bad_kind = _segments(table.column("segments").combine_chunks())

    rules: list[Rule] = [
        ("request_id", ~rid.valid, "is null", ()),
        ("request_id", dup_id, "duplicate of an earlier row", ()),
        ("session_id", ~sid.valid, "is null", ()),
        ("turn", ~turn.valid | (turn.values < 0) | (turn.values >= in_session),
         "turn {} outside 0..{} (the session has {} calls)", (turn, last_turn, n_in_session)),
        ("turn", dup_turn, "turn {} appears twice in the session", (turn,)),
        ("parent_id", pid.valid & ~parent_session.valid, "parent {} not in the file", (pid,)),
        ("parent_id", other_session, "parent {} belongs to session {}", (pid, parent_session)),
        ("parent_id", parent_turn.valid & turn.valid & (parent_turn.values >= turn.values),
         "parent {} is not an earlier call (turn {} >= {})", (pid, parent_turn, turn)),
        ("input_tokens", ~inp.valid | (inp.values < 1), "{} < 1", (inp,)),
        ("output_tokens", ~out.valid | (out.values < 0), "{} < 0", (out,)),
        ("input_tokens", inp.valid & (inp.values > max_tokens), f"{{}} is {above}", (inp,)),
        ("output_tokens", out.valid & (out.values > max_tokens), f"{{}} is {above}", (out,)),
        ("think_s", ~think.valid | np.isnan(think.values) | (think.values < 0),
         "{} is not a duration >= 0", (think,)),
        ("think_s", think.valid & np.isinf(think.values), "is infinite", ()),
        ("arrival_s", ~arrival.valid | ~np.isfinite(arrival.values), "{} is not a finite number",
         (arrival,)),
        ("arrival_s", _less(arrival, prev_arrival), "{} is before the previous turn's {}",
         (arrival, prev_arrival)),
        ("kept_blocks", ~kept.valid | (kept.values < 0), "{} < 0", (kept,)),
        ("kept_blocks", ~pid.valid & kept.valid & (kept.values > 0), "{} but the call has no parent",
         (kept,)),
        ("kept_blocks", parent_blocks.valid & kept.valid & (kept.values > parent_blocks.values),
         "{} exceeds the parent's {} blocks (prompt plus output)", (kept, parent_blocks)),
        ("new_block_hashes", ~hash_lists.valid, "is null", ()),
        ("new_block_hashes", kept.valid & n_new.valid & inp.valid
         & (kept.values + n_new.values != inp.values.astype(np.int64) // divisor),
         f"kept_blocks {{}} + {{}} new hashes != input_tokens {{}} // block_size {bs}",
         (kept, n_new, inp)),
        ("new_block_hashes", _hash_repeats(hashes, hash_lists),
         "a hash appears twice in one prompt (chained hashes cannot repeat: damaged hash data)", ()),
        ("reported_cached_tokens", _negative(c["reported_cached_tokens"]), "{} < 0",
         (c["reported_cached_tokens"],)),
        ("reported_cache_write_tokens", _negative(c["reported_cache_write_tokens"]), "{} < 0",
         (c["reported_cache_write_tokens"],)),
        ("cache_ttl_s", ttl.valid & (~np.isfinite(ttl.values) | (ttl.values <= 0)),
         "{} is not a duration > 0", (ttl,)),
        ("segments", seg_negative, "a segment has negative tokens", ()),
        ("segments", seg_bad_kind, f"unknown segment kind (known: {', '.join(sorted(SEGMENT_KINDS))})",
         ()),
        ("segments", inp.valid & (seg_sum.values != inp.values), "tokens sum to {}, not input_tokens {}",
         (seg_sum, inp)),
    ]
    found = []
    for column, hits, template, shown in rules:
        rows = np.flatnonzero(hits)
        texts = zip(*(v.texts(rows) for v in shown), strict=True) if shown else [()] * len(rows)
        found.extend((row, request, column, template.format(*values))
                     for row, request, values in zip(rows.tolist(), rid.texts(rows), texts, strict=True))
    found.sort(key=lambda p: p[0])
    return found

