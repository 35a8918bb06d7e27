"""Mutation fuzzing of the `traces` command: valid inputs of every importer and valid trace files,
mutated at random (seeded), fed to `traces import`, `validate`, `inspect` and `export mooncake`.

A run passes when the command exits 0 or 1 without a traceback, leaves no ``.partial`` file,
and every trace it writes passes ``validate``. Used by tests/test_fuzz.py (a few hundred runs)
and by ``python -m benchmarks.fuzz_traces`` (minutes).
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from traces.cli import main as traces_cli
from traces.validate import validate

DATA = Path(__file__).parent / "data"
# (importer, sample file); the large Claude Code sample is left out to keep runs fast
SAMPLES = [("mooncake", "mooncake.jsonl"), ("bailian", "bailian.jsonl"), ("weka", "weka.jsonl"),
           ("codex", "codex_session_alpha.jsonl"), ("azure", "azure.csv"),
           ("claude-code", "claude_code/short.jsonl")]
# values that break code written for the happy case
ODD_VALUES: list[Any] = [None, -1, 0, 1, 2**31, 2**63, 2**64, -(2**63), 1e308, float("nan"),
                         float("inf"), 0.5, True, "", "x", "-1", [], [0], [2**64], {}, {"a": 1}]


@dataclass
class Tally:
    """What a fuzz session found."""

    runs: int = 0
    tracebacks: int = 0
    distinct: Counter = field(default_factory=Counter)  # "Exception @ file:line" -> count
    debris: int = 0  # runs that left a .partial file
    invalid_outputs: int = 0  # imports that exited 0 with a trace validate rejects
    bad_exit: int = 0  # exit codes other than 0 and 1
    slow: int = 0  # runs over the hang threshold
    examples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"runs": self.runs, "tracebacks": self.tracebacks, "distinct_tracebacks": len(self.distinct),
                "debris": self.debris, "invalid_outputs": self.invalid_outputs, "bad_exit": self.bad_exit,
                "slow": self.slow}


# -- mutations of text inputs (JSONL, CSV) ----------------------------------------------------------

def _mutate_json_value(rng: np.random.Generator, obj: Any) -> Any:
    """Replace one value somewhere inside a parsed JSON document by an odd one."""
    if isinstance(obj, dict) and obj:
        key = list(obj)[rng.integers(len(obj))]
        if rng.random() < 0.5:
            obj[key] = _mutate_json_value(rng, obj[key])
        elif rng.random() < 0.5:
            del obj[key]
        else:
            obj[key] = ODD_VALUES[rng.integers(len(ODD_VALUES))]
        return obj
    if isinstance(obj, list) and obj:
        i = int(rng.integers(len(obj)))
        obj[i] = _mutate_json_value(rng, obj[i]) if rng.random() < 0.6 else ODD_VALUES[
            rng.integers(len(ODD_VALUES))]
        return obj
    return ODD_VALUES[rng.integers(len(ODD_VALUES))]


def mutate_text(rng: np.random.Generator, data: bytes) -> bytes:
    """One random mutation of a line-based file: structural (JSON values, CSV fields, whole lines)
    or raw bytes."""
    lines = data.splitlines()
    kind = rng.integers(8)
    i = int(rng.integers(len(lines))) if lines else 0
    if kind == 0 and lines:  # an odd value inside a JSON line
        try:
            obj = json.loads(lines[i])
            lines[i] = json.dumps(_mutate_json_value(rng, obj)).encode()
        except ValueError:
            lines[i] = lines[i][::-1]
    elif kind == 1 and lines:  # an odd CSV field
        fields = lines[i].split(b",")
        j = int(rng.integers(len(fields)))
        fields[j] = str(ODD_VALUES[rng.integers(len(ODD_VALUES))]).encode()
        lines[i] = b",".join(fields)
    elif kind == 2 and lines:  # a duplicated line
        lines.insert(i, lines[i])
    elif kind == 3 and lines:  # a dropped line
        del lines[i]
    elif kind == 4:  # flipped bytes
        raw = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            if raw:
                raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
        return bytes(raw)
    elif kind == 5:  # truncated
        return data[: int(rng.integers(len(data) + 1))]
    elif kind == 6 and lines:  # two lines swapped
        j = int(rng.integers(len(lines)))
        lines[i], lines[j] = lines[j], lines[i]
    else:  # a big number where a digit was
        raw = data.decode("utf-8", "replace")
        digits = [k for k, ch in enumerate(raw) if ch.isdigit()]
        if digits:
            k = digits[int(rng.integers(len(digits)))]
            raw = raw[:k] + str(10 ** int(rng.integers(9, 25))) + raw[k + 1:]
        return raw.encode()
    return b"\n".join(lines) + b"\n"


# -- mutations of trace files ---------------------------------------------------------------------

def mutate_trace(rng: np.random.Generator, src: Path, dst: Path) -> None:
    """A damaged copy of a valid trace: flipped or cut bytes, or a table-level change (an odd
    value, a column of the wrong type, a missing column, odd metadata, zeroed hashes)."""
    kind = rng.integers(6)
    if kind == 0:
        raw = bytearray(src.read_bytes())
        for _ in range(int(rng.integers(1, 16))):
            raw[int(rng.integers(4, len(raw) - 8))] = int(rng.integers(256))
        dst.write_bytes(bytes(raw))
        return
    if kind == 1:
        raw = src.read_bytes()
        dst.write_bytes(raw[: int(rng.integers(len(raw)))])
        return
    table = pq.read_table(src)
    meta = dict(table.schema.metadata or {})
    name = table.column_names[int(rng.integers(table.num_columns))]
    col = table.column(name)
    if kind == 2:  # an odd value in one row
        rows = table.to_pylist()
        r = rows[int(rng.integers(len(rows)))]
        r[name] = _odd_for(rng, col.type)
        try:
            table = pa.Table.from_pylist(rows, schema=table.schema)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            table = table.set_column(table.schema.get_field_index(name), name,
                                     pa.array([str(v) for v in col.to_pylist()]))
    elif kind == 3:  # a column as strings, or missing
        index = table.schema.get_field_index(name)
        if rng.random() < 0.5:
            table = table.set_column(index, name, pa.array([str(v) for v in col.to_pylist()]))
        else:
            table = table.remove_column(index)
    elif kind == 4:  # odd metadata
        key = [b"source", b"block_size", b"schema_version"][int(rng.integers(3))]
        meta[key] = [b"[1, 2]", b"\"text\"", b"null", b"{", b"0", b"-4", b"99", b""][int(rng.integers(8))]
    else:  # a run of zero hashes
        rows = table.to_pylist()
        for r in rows:
            if r["new_block_hashes"] and rng.random() < 0.5:
                r["new_block_hashes"] = [0] * len(r["new_block_hashes"])
        table = pa.Table.from_pylist(rows, schema=table.schema)
    pq.write_table(table.replace_schema_metadata(meta), dst)


def _odd_for(rng: np.random.Generator, kind: pa.DataType) -> Any:
    if pa.types.is_integer(kind):
        return [None, -1, 0, 2**31 - 1, -(2**31)][int(rng.integers(5))] if pa.types.is_int32(kind) \
            else [None, 0, 2**63, 2**64 - 1][int(rng.integers(4))]
    if pa.types.is_floating(kind):
        return [None, float("nan"), float("inf"), -float("inf"), -1.0, 1e300][int(rng.integers(6))]
    if pa.types.is_list(kind):
        return [None, [], [0], [2**64 - 1] * 3][int(rng.integers(4))]
    return [None, "", "x" * 1000, "\x00"][int(rng.integers(4))]


# -- running ---------------------------------------------------------------------------------------

def _invoke(args: list[str], tally: Tally, slow_s: float) -> int:
    t0 = time.perf_counter()
    try:
        result = CliRunner().invoke(traces_cli, args, catch_exceptions=True)
        exception, exc_tb = result.exception, result.exc_info and result.exc_info[2]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a Rust panic in a library (pyo3's PanicException) is no Exception
        result, exception, exc_tb = None, exc, exc.__traceback__
    tally.runs += 1
    if time.perf_counter() - t0 > slow_s:
        tally.slow += 1
        tally.examples.append(f"slow ({time.perf_counter() - t0:.1f} s): traces {' '.join(args)}")
    if exception is not None and not isinstance(exception, SystemExit):
        tally.tracebacks += 1
        frame = traceback.extract_tb(exc_tb)[-1]
        where = f"{type(exception).__name__} @ {Path(frame.filename).name}:{frame.lineno}"
        if where not in tally.distinct:
            tally.examples.append(f"{where}: traces {' '.join(args)}: {str(exception)[:200]}")
        tally.distinct[where] += 1
        return -1
    assert result is not None
    if result.exit_code not in (0, 1):
        tally.bad_exit += 1
        tally.examples.append(f"exit {result.exit_code}: traces {' '.join(args)}")
    return result.exit_code


def _debris(folder: Path, tally: Tally, what: str) -> None:
    left = list(folder.rglob("*.partial"))
    if left:
        tally.debris += 1
        tally.examples.append(f"debris {[p.name for p in left]} after {what}")
        for p in left:
            p.unlink()


def base_trace(workdir: Path) -> Path:
    """A small valid trace with sessions, parents, kept blocks and output blocks."""
    path = workdir / "base.parquet"
    if not path.exists():
        result = CliRunner().invoke(traces_cli, [
            "generate", "coding-agent", "--sessions", "3", "--seed", "1", "--out", str(path),
            "tools_tokens=500", "system_tokens=200", "human_prompts=[1,2]",
            "calls_per_prompt={median: 3, sigma: 0.5, min: 1, max: 6}"])
        assert result.exit_code == 0, result.output
    return path


def fuzz(runs: int, seed: int, workdir: Path, slow_s: float = 10.0, deadline_s: float | None = None) -> Tally:
    """``runs`` mutated inputs, alternating importers and trace commands, seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    tally = Tally()
    workdir.mkdir(parents=True, exist_ok=True)
    trace = base_trace(workdir)
    start = time.perf_counter()
    for k in range(runs):
        if deadline_s is not None and time.perf_counter() - start > deadline_s:
            break
        case = workdir / f"case{k % 8}"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir()
        if k % 3:  # an importer
            fmt, sample = SAMPLES[int(rng.integers(len(SAMPLES)))]
            data = (DATA / sample).read_bytes()
            for _ in range(int(rng.integers(1, 4))):
                data = mutate_text(rng, data)
            src = case / Path(sample).name
            src.write_bytes(data)
            out = case / "out.parquet"
            code = _invoke(["import", fmt, str(src), "--out", str(out)], tally, slow_s)
            _debris(case, tally, f"import {fmt}")
            if code == 0:
                try:
                    problems = validate(out)
                except Exception as exc:  # noqa: BLE001 - any failure here is a finding
                    problems = [f"validate raised {exc!r}"]
                if problems:
                    tally.invalid_outputs += 1
                    tally.examples.append(f"import {fmt} wrote an invalid trace: {problems[0]}")
        else:  # a damaged trace
            bad = case / "bad.parquet"
            mutate_trace(rng, trace, bad)
            command = [["validate", str(bad)], ["inspect", str(bad)],
                       ["export", "mooncake", str(bad), "--out", str(case / "out.jsonl"),
                        "--block-size", "64"]][int(rng.integers(3))]
            _invoke(command, tally, slow_s)
            _debris(case, tally, command[0])
    return tally
