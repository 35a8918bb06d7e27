"""Shared bits of the benchmark scripts: peak RSS and the table + JSON output convention."""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def report(title: str, figures: dict[str, Any]) -> None:
    """Print a readable table, then the figures as one JSON object on the last line."""
    print(title)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        if isinstance(value, float):
            text = f"{value:,.2f}"
        else:
            text = f"{value:,}" if isinstance(value, int) else value
        print(f"  {key:<{width}}  {text}")
    print(json.dumps(figures))
