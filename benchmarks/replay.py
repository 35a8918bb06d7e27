"""Replay speed and memory: the whole pipeline (runner, engine, metrics, the API billing pass,
assembly of requests.parquet) on a coding-agent trace of ~100k calls (the generator's defaults:
a new session every ~50 s), served by 4 instances of Llama-3.1-70B on 8 H100s each, which keep
up with that load (no queue). It runs with replay.baseline=off: one simulation, as the targets
below are for; --baseline adds the second, no-reuse simulation (about twice the engine time).

Targets on a 2-core machine: analytic >= 20,000 calls/s; offload (three tiers) >= 5,000 calls/s
and peak RSS <= 2 GiB.
Usage: python -m benchmarks.replay [--sessions 520] [--engine analytic] [--cache hbm_dram]
       [--instances 4] [--baseline] [hydra overrides...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from benchmarks.common import peak_rss_mib, report
from replay.app import run
from traces.synth import generate, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=520, help="~190 calls each")
    parser.add_argument("--engine", default="analytic")
    parser.add_argument("--cache", default="hbm_dram")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--baseline", action="store_true", help="also simulate the no-reuse baseline")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "coding.parquet"
        generate(load_config("coding_agent", [f"sessions={args.sessions}"]), trace)
        with initialize_config_module(version_base=None, config_module="conf"):
            cfg = compose("config", overrides=[
                f"engine={args.engine}", f"cache={args.cache}", f"instances={args.instances}",
                "trace=file", f"trace.path={trace}",
                "replay.progress=false", "plots=false",
                f"replay.baseline={'simulate' if args.baseline else 'off'}", *args.overrides])
        start = time.perf_counter()
        summary = run(cfg, Path(tmp))
        seconds = time.perf_counter() - start
    report(f"replay {args.engine} / {args.cache}, {summary['calls']:,} coding-agent calls", {
        "engine": args.engine,
        "cache": args.cache,
        "instances": args.instances,
        "baseline": "simulate" if args.baseline else "off",
        "calls": summary["calls"],
        "seconds": round(seconds, 2),
        "calls_per_s": round(summary["calls"] / seconds, 1),
        "reuse": round(summary["reuse"], 4),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    })


if __name__ == "__main__":
    main()
