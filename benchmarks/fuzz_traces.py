"""Mutation fuzzing of `traces import/validate/inspect/export` (tests/fuzzkit.py) for longer than
the test suite can: prints runs, tracebacks (and the distinct places they come from), hangs,
debris (.partial files left) and invalid outputs, then the figures as JSON.

    python -m benchmarks.fuzz_traces --seconds 600 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzzkit import fuzz  # noqa: E402

from benchmarks.common import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--runs", type=int, default=10**9, help="stop after this many runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow", type=float, default=10.0, help="a run over this many seconds is a hang")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tally = fuzz(args.runs, args.seed, Path(tmp), slow_s=args.slow, deadline_s=args.seconds)
    for line in tally.examples[:60]:
        print(line)
    for where, n in tally.distinct.most_common():
        print(f"{n:6}  {where}")
    report("traces fuzzing", tally.summary())


if __name__ == "__main__":
    main()
