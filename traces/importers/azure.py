"""AzurePublicDataset LLM inference traces: CSV with TIMESTAMP, ContextTokens, GeneratedTokens.

They carry no hashes, so every block is unique (each call its own session) and the ideal
reuse is zero; the trace's source metadata says so.
"""

from __future__ import annotations

import csv
from datetime import datetime

import numpy as np

from traces.hashing import chain_hashes, string_key
from traces.importers.common import Call, Problems, Skip, expand_paths

DEFAULT_BLOCK_SIZE = 64
WORKLOAD = "azure"
NOTE = "no hashes in the source: every block is unique"
COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip().replace(" ", "T")[:26]).timestamp()
    except ValueError:
        raise Skip(f"TIMESTAMP {text!r:.40} is neither seconds nor a date-time") from None


def _count(row: dict[str, str], key: str, minimum: int) -> int:
    text = (row.get(key) or "").strip()
    if not text:
        raise Skip(f"field '{key}' missing")
    try:
        value = int(text)
    except ValueError:
        raise Skip(f"field '{key}' should be an integer, got {text!r:.40}") from None
    if value < minimum:
        raise Skip(f"field '{key}' is {value}, must be >= {minimum}")
    return value


def parse(paths: list[str], block_size: int, problems: Problems) -> list[Call]:
    calls = []
    for path in expand_paths(paths, "*.csv"):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(str(path), None, f"not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        if not text.strip():
            problems.add(str(path), None, "file is empty")
            continue
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            problems.add(str(path), 1, f"header lacks {', '.join(missing)}")
            continue
        for number, row in enumerate(reader, start=2):
            try:
                if None in row or None in row.values():
                    raise Skip(f"row has {len(row) - (None in row) + len(row.get(None) or [])} fields, "
                               f"the header has {len(reader.fieldnames)}")
                n_in = _count(row, "ContextTokens", 1)
                rid = f"{path.stem}:{number}"
                key = string_key(rid)
                blocks = np.arange(n_in // block_size, dtype=np.uint64) + np.uint64(key)
                calls.append(Call(rid, rid, _time(row["TIMESTAMP"]), n_in,
                                  _count(row, "GeneratedTokens", 0), chain_hashes(None, blocks)))
            except Skip as exc:
                problems.add(str(path), number, str(exc))
    return calls
