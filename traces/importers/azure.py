"""AzurePublicDataset LLM inference traces: CSV with TIMESTAMP, ContextTokens, GeneratedTokens.

They carry no hashes, so every block is unique (each call its own session) and the ideal
reuse is zero; the trace's source metadata says so. Token counts are bounded (conf/limits.yaml,
``--max-tokens``) before any block is made; a line too long for the csv module is a bad line.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime

import numpy as np

from traces.hashing import chain_hashes, string_key
from traces.importers.common import Call, Problems, Skip, expand_paths, read_bytes

DEFAULT_BLOCK_SIZE = 64
WORKLOAD = "azure"
NOTE = "no hashes in the source: every block is unique"
COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _time(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise Skip(f"TIMESTAMP {text!r:.40} is not a time >= 0")
        return seconds
    try:
        return datetime.fromisoformat(text.strip().replace(" ", "T")[:26]).timestamp()
    except (ValueError, OverflowError, OSError):
        raise Skip(f"TIMESTAMP {text!r:.40} is neither seconds nor a date-time") from None


def _count(row: dict[str, str], key: str, minimum: int, maximum: int) -> int:
    text = (row.get(key) or "").strip()
    if not text:
        raise Skip(f"field '{key}' missing")
    try:
        value = int(text)
    except ValueError:
        raise Skip(f"field '{key}' should be an integer, got {text!r:.40}") from None
    if value < minimum:
        raise Skip(f"field '{key}' is {value}, must be >= {minimum}")
    if value > maximum:
        raise Skip(f"field '{key}' is {value:,}, above the limit of {maximum:,} tokens "
                   "(raise it with --max-tokens)")
    return value


def parse(paths: list[str], block_size: int, problems: Problems) -> list[Call]:
    calls = []
    for path in expand_paths(paths, "*.csv"):
        data = read_bytes(path, problems)
        if data is None:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(str(path), None, f"not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        if not text.strip():
            problems.add(str(path), None, "file is empty")
            continue
        lines = text.splitlines()
        reader = csv.DictReader(lines)
        try:
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        except csv.Error as exc:
            problems.add(str(path), 1, f"bad CSV header ({exc})")
            continue
        if missing:
            problems.add(str(path), 1, f"header lacks {', '.join(missing)}")
            continue
        for number in range(2, len(lines) + 1):
            try:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. a field past the csv module's size limit
                    raise Skip(f"bad CSV line ({exc})") from None
                if None in row or None in row.values():
                    raise Skip(f"row has {len(row) - (None in row) + len(row.get(None) or [])} fields, "
                               f"the header has {len(reader.fieldnames)}")
                n_in = _count(row, "ContextTokens", 1, problems.max_tokens)
                rid = f"{path.stem}:{number}"
                key = string_key(rid)
                blocks = np.arange(n_in // block_size, dtype=np.uint64) + np.uint64(key)
                calls.append(Call(rid, rid, _time(row["TIMESTAMP"]), n_in,
                                  _count(row, "GeneratedTokens", 0, problems.max_tokens),
                                  chain_hashes(None, blocks)))
            except Skip as exc:
                problems.add(str(path), number, str(exc))
    return calls
