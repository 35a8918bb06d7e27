"""Replay speed and memory: the whole pipeline (runner, engine, metrics, the API bill,
assembly of requests.parquet) on a coding-agent trace of ~100k calls (the generator's defaults:
a new session every ~50 s), served by 4 instances of Llama-3.1-70B on 8 H100s each, which keep
up with that load (no queue); then the same trace on one instance, which cannot keep up (its
queue grows through the run: the overloaded figures, ``overloaded_*``). It runs with
replay.baseline=off: one simulation, as the targets below are for; --baseline adds the second,
no-reuse simulation (about twice the engine time). The API bill runs in its own process (the
trace is over ``replay.bill_process_min_calls``), on the machine's second core: ``seconds`` and
``calls_per_s`` are wall time, ``cpu_s`` is the replay's process, ``bill_process_cpu_s`` the
bill's, and ``calls_per_cpu_s`` counts both.

Targets on a 2-core machine: analytic >= 20,000 calls/s; offload (three tiers) >= 10,000
calls/s and peak RSS <= 2 GiB. ``yardstick_s`` (benchmarks/common.py) says how fast the machine
was: compare calls/s x yardstick_s across machines.
Usage: python -m benchmarks.replay [--sessions 520] [--engine analytic] [--cache hbm_dram]
       [--instances 4] [--overloaded-instances 1] [--baseline] [hydra overrides...]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module

from benchmarks.common import peak_rss_mib, report
from replay.app import run
from traces.synth import generate, load_config


def measure(trace: Path, out: Path, args: argparse.Namespace, instances: int) -> dict[str, Any]:
    """One replay of ``trace`` on ``instances`` instances: its speed and what it simulated."""
    with initialize_config_module(version_base=None, config_module="conf"):
        cfg = compose("config", overrides=[
            f"engine={args.engine}", f"cache={args.cache}", f"instances={instances}",
            "trace=file", f"trace.path={trace}", "replay.progress=false", "plots=false",
            f"replay.baseline={'simulate' if args.baseline else 'off'}", *args.overrides])
    out.mkdir()
    start, cpu, child_cpu = time.perf_counter(), cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN)
    summary = run(cfg, out)
    seconds = time.perf_counter() - start
    cpu, child_cpu = cpu_s(resource.RUSAGE_SELF) - cpu, cpu_s(resource.RUSAGE_CHILDREN) - child_cpu
    return {
        "instances": instances,
        "calls": summary["calls"],
        "seconds": round(seconds, 2),
        "calls_per_s": round(summary["calls"] / seconds, 1),
        "cpu_s": round(cpu, 2),  # this process
        "bill_process_cpu_s": round(child_cpu, 2),  # the API bill's process, on the other core
        "calls_per_cpu_s": round(summary["calls"] / (cpu + child_cpu), 1),  # both processes' CPU
        "reuse": round(summary["reuse"], 4),
        "ttft_p50_s": round(summary["ttft_s"]["p50"], 4),
        "ttft_p99_s": round(summary["ttft_s"]["p99"], 4),
        "queue_p99_s": round(summary["queue_s"]["p99"], 4),
        "gpu_utilisation": round(summary["gpu_utilisation"], 4),
    }


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=520, help="~190 calls each")
    parser.add_argument("--engine", default="analytic")
    parser.add_argument("--cache", default="hbm_dram")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--overloaded-instances", type=int, default=1,
                        help="the overloaded run's instances (0: skip it)")
    parser.add_argument("--baseline", action="store_true", help="also simulate the no-reuse baseline")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "coding.parquet"
        generate(load_config("coding_agent", [f"sessions={args.sessions}"]), trace)
        figures = {"engine": args.engine, "cache": args.cache,
                   "baseline": "simulate" if args.baseline else "off",
                   **measure(trace, Path(tmp) / "run", args, args.instances)}
        rss = peak_rss_mib()
        if args.overloaded_instances:
            over = measure(trace, Path(tmp) / "overloaded", args, args.overloaded_instances)
            figures.update({f"overloaded_{k}": v for k, v in over.items() if k != "calls"})
    # (no RSS figure for the bill's process: Linux carries the parent's peak into a child's
    # ru_maxrss across the exec, so RUSAGE_CHILDREN would report this process's peak)
    report(f"replay {args.engine} / {args.cache}, {figures['calls']:,} coding-agent calls",
           {**figures, "peak_rss_mib": round(rss, 1), "overall_peak_rss_mib": round(peak_rss_mib(), 1)})


if __name__ == "__main__":
    main()
