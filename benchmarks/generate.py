"""Generation speed, size on disk and memory for coding-agent sessions.

Targets on a 2-core machine: >= 20,000 requests/s, <= 2 KiB on disk per request, peak RSS
<= 1 GiB whatever the session count.  Usage: python -m benchmarks.generate [--sessions 10000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import peak_rss_mib, report
from traces.synth import generate, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = load_config("coding_agent", [f"sessions={args.sessions}", f"seed={args.seed}"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coding.parquet"
        start = time.perf_counter()
        rows = generate(cfg, out)
        seconds = time.perf_counter() - start
        size = os.path.getsize(out)
    report(f"generate coding_agent, {args.sessions} sessions", {
        "sessions": args.sessions,
        "requests": rows,
        "seconds": round(seconds, 2),
        "requests_per_s": round(rows / seconds, 1),
        "bytes_per_request": round(size / rows, 1),
        "file_mib": round(size / 2**20, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    })


if __name__ == "__main__":
    main()
