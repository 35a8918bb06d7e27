"""Shared bits of the benchmark scripts: peak RSS, a machine yardstick and the table + JSON
output convention."""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

YARDSTICK_LOOP = 2_000_000  # additions in the yardstick loop: ~0.1 s on this project's VMs


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def yardstick_s(repeats: int = 5) -> float:
    """Seconds of a fixed pure-Python loop, the fastest of ``repeats``: the same in every script,
    so figures taken on two machines (speeds here differ 2x and more) can be compared by it."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(YARDSTICK_LOOP):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def report(title: str, figures: dict[str, Any]) -> None:
    """Print a readable table, then the figures as one JSON object on the last line, with the
    machine yardstick (``yardstick_s``) added."""
    figures = {**figures, "yardstick_s": yardstick_s()}
    print(title)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        if isinstance(value, float):
            text = f"{value:,.2f}"
        else:
            text = f"{value:,}" if isinstance(value, int) else value
        print(f"  {key:<{width}}  {text}")
    print(json.dumps(figures))
