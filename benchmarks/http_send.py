"""Open-loop send accuracy of engine=http: how late each call leaves against its schedule.

200 calls/s for --seconds (open mode, one-call sessions of 64 prompt tokens and 4 output tokens)
against the fake llama.cpp-style server of the tests, run in its own process with a fixed reply
time (--ttft, --tpot), so the server is never the bottleneck and what is measured is the client:
send_lag_s = actual - intended send. Target: p99 <= 5 ms when the client is not the bottleneck.
Usage: python -m benchmarks.http_send [--rate 200] [--seconds 10] [--ttft 0.02] [--tpot 0.005]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from hydra import compose, initialize_config_module

from benchmarks.common import report
from replay.app import run
from tests.tracekit import row, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ttft", type=float, default=0.02, help="fake server: seconds to the first token")
    parser.add_argument("--tpot", type=float, default=0.005, help="fake server: seconds per further token")
    args = parser.parse_args()
    n = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trace = write(tmp / "t.parquet", [row(f"s{i:06d}", 0, 64, [i * 4 + j + 1 for j in range(4)],
                                              output_tokens=4, arrival_s=i / args.rate) for i in range(n)],
                      block_size=16)
        port_file = tmp / "port"
        server = subprocess.Popen([sys.executable, "-m", "tests.fake_server", "--port-file", str(port_file),
                                   "--ttft", str(args.ttft), "--tpot", str(args.tpot)])
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            out = tmp / "run"
            out.mkdir()
            with initialize_config_module(version_base=None, config_module="conf"):
                cfg = compose("config", overrides=[
                    "engine=http", f"engine.base_url=http://127.0.0.1:{port_file.read_text()}",
                    "engine.dialect=llamacpp", "trace=file", f"trace.path={trace}", "replay.mode=open",
                    "replay.progress=false", "plots=false"])
            summary = run(cfg, out)
            df = pl.read_parquet(out / "requests.parquet")
        finally:
            server.terminate()
            server.wait()
    lag = df["send_lag_s"]
    http = summary["engine_stats"]["http"]
    report(f"engine=http open-loop send accuracy: {args.rate:g} calls/s for {args.seconds:g} s "
           f"(fake server, ttft {args.ttft * 1e3:g} ms, tpot {args.tpot * 1e3:g} ms)", {
        "calls": df.height,
        "errors": int(df["error"].is_not_null().sum()),
        "send_lag_p50_ms": float(lag.quantile(0.5)) * 1e3,
        "send_lag_p99_ms": float(lag.quantile(0.99)) * 1e3,
        "send_lag_max_ms": float(lag.max()) * 1e3,
        "ttft_p50_ms": float(df["ttft_s"].quantile(0.5)) * 1e3,
        "degraded": http["degraded"],
    })


if __name__ == "__main__":
    main()
