"""Capacity-plan speed: `replay-plan --plan coding_agent` (16 candidates: H100 / H200 x tp 4 / 8 x
hbm_only, hbm_dram, hbm_dram_nvme, warehouse; Llama-3.1-70B on the analytic engine; each
candidate's highest session rate meeting TTFT p99 <= 2 s and TPOT p99 <= 50 ms, to 2%, then
the rate found replayed with 2 other seeds).

Target on a 2-core machine: <= 10 minutes for the whole plan.
Usage: python -m benchmarks.plan [--plan coding_agent] [--jobs 1] [--out DIR] [overrides...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from benchmarks.common import report
from replay.plan import load_plan, run_plan, shown
from replay.sweep import markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", default="coding_agent")
    parser.add_argument("--jobs", type=int, default=1, help="candidates in parallel processes")
    parser.add_argument("--out", type=Path, default=None, help="keep the plan's folder here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every candidate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "plan"
        start = time.perf_counter()
        frame = run_plan(load_plan(args.plan), out, jobs=args.jobs, extra=args.overrides)
        seconds = time.perf_counter() - start
        runs = list(out.glob("c*/*/requests.parquet"))  # search probes and confirmations
        calls = sum(pl.scan_parquet(str(p)).select(pl.len()).collect().item() for p in runs)
    print(markdown(shown(frame)))
    figures = {
        "plan": args.plan,
        "candidates": frame.height,
        "jobs": args.jobs,
        "probes": int(frame["probes"].sum()),
        "confirmation_runs": len(runs) - int(frame["probes"].sum()),
        "calls_replayed": calls,
        "wall_s": round(seconds, 1),
        "calls_per_s": round(calls / seconds, 1),
    }
    ok = frame.filter(pl.col("usd_per_session").is_not_null())
    if ok.height:
        best = ok.row(0, named=True)
        figures["cheapest_candidate"] = best["candidate"]
        figures["cheapest_usd_per_session"] = round(best["usd_per_session"], 5)
        for cache in ok["cache"].unique().sort():
            rows = ok.filter(pl.col("cache") == cache)
            figures[f"{cache}_best_usd_per_session"] = round(rows["usd_per_session"].min(), 5)
            rate = rows["max_sessions_per_s_per_gpu"].max()
            figures[f"{cache}_best_sessions_per_s_per_gpu"] = round(rate, 5)
    figures["infeasible_candidates"] = frame.height - ok.height
    report(f"replay-plan {args.plan}: {frame.height} candidates", figures)


if __name__ == "__main__":
    main()
