"""What every importer shares: reading JSONL and CSV with per-line problems, field checks,
and turning parsed calls into a trace file (delta form, written only when complete).

Bad input (a malformed JSON line, a missing or mistyped field, a negative, non-finite or too
large number, bad UTF-8, an empty or unreadable file) is skipped and counted by default, with the
first examples reported as file:line and reason; ``strict`` stops at the first. The count of
skipped lines lands in the trace's ``source`` metadata. Token counts are bounded by
``max_tokens`` (conf/limits.yaml, ``--max-tokens``), hash ids by 2**64. A call whose request id
repeats an earlier one (a duplicated line) is dropped, the first kept, and reported. The written
trace is validated before it gets its name: an importer never leaves a trace `validate` rejects.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traces.hashing import output_blocks_after
from traces.io import TraceWriter
from traces.schema import TraceError, TraceMeta, default_max_tokens

EXAMPLES = 5
MAX_HASH_ID = 2**64 - 1  # ids are stored as uint64


class Skip(Exception):
    """This line is bad; the reason says why."""


@dataclass
class Problems:
    """Bad lines met while parsing, and the bounds they are judged by."""

    strict: bool
    max_tokens: int = field(default_factory=default_max_tokens)
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    counted: dict[str, int] = field(default_factory=dict)
    facts: dict[str, int] = field(default_factory=dict)  # kept on purpose, worth saying (not errors)

    def add(self, file: str, line: int | None, reason: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        if self.strict:
            raise TraceError(f"{where}: {reason}")
        self.skipped += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def tokens(self, obj: dict[str, Any], key: str, minimum: int) -> int:
        """A token count: an integer in [minimum, max_tokens]."""
        return need(obj, key, int, minimum, self.max_tokens)

    def check_tokens(self, what: str, value: int) -> None:
        """Skip a count computed from several fields (a sum) that exceeds the bound."""
        if value > self.max_tokens:
            raise Skip(f"{what} is {value:,}, above the limit of {self.max_tokens:,} tokens "
                       "(raise it with --max-tokens)")

    def note(self, what: str) -> None:
        """Count lines dropped on purpose (not errors), e.g. API-error lines."""
        self.counted[what] = self.counted.get(what, 0) + 1

    def tell(self, what: str, n: int) -> None:
        """A count of something kept that a user comparing with another tool should know."""
        self.facts[what] = n

    def report(self) -> str:
        lines = [f"skipped {self.skipped} bad line(s)"] if self.skipped else []
        lines += [f"  {e}" for e in self.examples]
        lines += [f"dropped {n} {what}" for what, n in sorted(self.counted.items())]
        lines += [f"{n} {what}" for what, n in sorted(self.facts.items())]
        return "\n".join(lines)


def expand_paths(paths: Iterable[str | os.PathLike], pattern: str = "*.jsonl") -> list[Path]:
    """Files as given, folders searched recursively for ``pattern``; a missing path is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob(pattern)))
        elif p.exists():
            out.append(p)
        else:
            raise TraceError(f"{p}: no such file or folder")
    return out


def read_bytes(path: Path, problems: Problems) -> bytes | None:
    """The file's bytes, or None (a problem recorded) when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.add(str(path), None, f"cannot read ({exc.strerror or exc})")
        return None


def read_jsonl(path: Path, problems: Problems) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each good line of a JSONL file."""
    data = read_bytes(path, problems)
    if data is None:
        return
    if not data.strip():
        problems.add(str(path), None, "file is empty")
        return
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(str(path), number, f"not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.add(str(path), number, f"malformed JSON ({exc.msg})")
            continue
        except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
            problems.add(str(path), number, f"malformed JSON ({str(exc)[:80]})")
            continue
        except RecursionError:
            problems.add(str(path), number, "JSON nested too deeply")
            continue
        if not isinstance(obj, dict):
            problems.add(str(path), number, "not a JSON object")
            continue
        yield number, obj


def need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], minimum: float | None = None,
         maximum: float | None = None) -> Any:
    """A required field of the given type (bools are not numbers, numbers are finite), in
    [``minimum``, ``maximum``]."""
    if key not in obj or obj[key] is None:
        raise Skip(f"field '{key}' missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise Skip(f"field '{key}' should be {names}, got {type(value).__name__} {value!r:.40}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Skip(f"field '{key}' is {value}, not a finite number")
    if minimum is not None and value < minimum:
        raise Skip(f"field '{key}' is {value}, must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise Skip(f"field '{key}' is {value:,}, above the limit of {maximum:,} "
                   "(raise it with --max-tokens)")
    return value


def optional(obj: dict[str, Any], key: str, kind: type | tuple[type, ...],
             minimum: float | None = None) -> Any:
    """An optional field: None when absent, else checked as ``need`` checks it."""
    return None if obj.get(key) is None else need(obj, key, kind, minimum)


def need_ids(obj: dict[str, Any], key: str) -> list[int]:
    ids = need(obj, key, list)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 or i > MAX_HASH_ID for i in ids):
        raise Skip(f"field '{key}' must be a list of integers in 0..2**64-1")
    return ids


def optional_text(obj: dict[str, Any], key: str) -> str | None:
    """An optional string field such as a model name: None when absent."""
    return optional(obj, key, str)


@dataclass
class Call:
    """One imported call, with its full prompt block list at the import block size."""

    session_id: str
    request_id: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    blocks: np.ndarray
    parent_id: str | None = None
    agent: str = "main"
    think_s: float | None = None  # None: the gap since the parent was sent
    model: str | None = None
    reported_cached_tokens: int | None = None
    reported_cache_write_tokens: int | None = None
    cache_ttl_s: float | None = None
    segments: list[tuple[str, int]] | None = None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def write_trace(out: str | os.PathLike, calls: list[Call], block_size: int, workload: str,
                source: dict[str, Any], problems: Problems) -> int:
    """Write calls as a trace: sessions in order of their first call, calls by arrival, each
    keeping the longest common prefix of its parent's sequence (prompt plus output blocks)."""
    calls = _first_of_each_id(calls, problems)
    if not calls:
        raise TraceError("no calls to write: every line was skipped or the input is empty"
                         + (f"\n{problems.report()}" if problems.skipped else ""))
    sessions: dict[str, list[Call]] = {}
    for c in sorted(calls, key=lambda c: c.arrival_s):
        sessions.setdefault(c.session_id, []).append(c)
    meta = TraceMeta(block_size=block_size, source={
        **source, "skipped_lines": problems.skipped, "dropped": dict(problems.counted),
        **({"counts": dict(problems.facts)} if problems.facts else {}),
        **({"max_tokens": problems.max_tokens} if problems.max_tokens > default_max_tokens() else {})})
    t0 = min(c.arrival_s for c in calls)
    with TraceWriter(out, meta, check=_valid) as writer:
        for session in sessions.values():
            by_id: dict[str, Call] = {}
            for turn, c in enumerate(session):
                parent = by_id.get(c.parent_id) if c.parent_id else None
                kept = 0
                if parent is not None:
                    seq = np.concatenate([parent.blocks, output_blocks_after(
                        parent.blocks, parent.request_id, parent.input_tokens, parent.output_tokens,
                        block_size)])
                    kept = common_prefix(seq, c.blocks)
                think = c.think_s
                if think is None:
                    think = max(c.arrival_s - parent.arrival_s, 0.0) if parent is not None else 0.0
                writer.add(
                    np.ascontiguousarray(c.blocks[kept:], dtype=np.uint64),
                    c.segments or [("unknown", c.input_tokens)],
                    session_id=c.session_id, request_id=c.request_id,
                    parent_id=parent.request_id if parent is not None else None, turn=turn,
                    agent=c.agent, workload=workload, arrival_s=c.arrival_s - t0, think_s=think,
                    input_tokens=c.input_tokens, output_tokens=c.output_tokens, kept_blocks=kept,
                    model=c.model, reported_cached_tokens=c.reported_cached_tokens,
                    reported_cache_write_tokens=c.reported_cache_write_tokens, cache_ttl_s=c.cache_ttl_s,
                )
                by_id[c.request_id] = c
    return len(calls)


def _first_of_each_id(calls: list[Call], problems: Problems) -> list[Call]:
    """Drop calls whose request id repeats an earlier call's (a duplicated line); each is a
    reported problem (``--strict`` stops)."""
    seen: set[str] = set()
    kept = []
    for c in calls:
        if c.request_id in seen:
            problems.add(f"request {c.request_id}", None, "repeats an earlier call's request id "
                         "(a duplicated line?); the first is kept")
            continue
        seen.add(c.request_id)
        kept.append(c)
    return kept


def _valid(partial: Path) -> None:
    """Refuse to give a trace its name if `traces validate` would reject it."""
    from traces.validate import validate

    problems = validate(partial)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        first = problems[0].replace(f"{partial}:", f"{partial.with_suffix('')}:", 1)
        raise TraceError(f"the import would write an invalid trace, nothing written: {first}{more}")
