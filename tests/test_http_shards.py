"""Sharding: the same trace replayed through engine=http in 1 shard and in 4 (Hydra's joblib
launcher, a shared replay.start_at), merged with replay-merge, sends the same calls with the same
prompts."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import polars as pl
from replaykit import run_cli

from replay.runner import shard_of
from tests.fake_server import FakeServer
from tests.tracekit import row, write

SESSIONS = [f"s{k}" for k in range(8)]


def _trace(path: Path) -> Path:
    """8 sessions of 3 calls; each child keeps its parent's prompt and the block its output completed."""
    rows = []
    for k, s in enumerate(SESSIONS):
        base = 100 * (k + 1)
        rows.append(row(s, 0, 8, [base + 1, base + 2], output_tokens=4, arrival_s=0.01 * k))
        rows.append(row(s, 1, 16, [base + 9], parent=f"{s}-0", kept=3, output_tokens=4, think_s=0.01,
                        arrival_s=0.01 * k + 0.01))
        rows.append(row(s, 2, 21, [base + 20], parent=f"{s}-1", kept=4, output_tokens=2, think_s=0.01,
                        arrival_s=0.01 * k + 0.02))
    return write(path, rows, block_size=4)


def test_one_shard_and_four_merged_send_the_same_calls_and_prompts(tmp_path):
    trace = _trace(tmp_path / "t.parquet")
    assert len({shard_of(s, 4) for s in SESSIONS}) > 1  # the 8 sessions really spread over shards
    common = ["engine=http", "engine.dialect=llamacpp", "engine.token_id_low=100", "trace=file",
              f"trace.path={trace}", "plots=false", "replay.progress=false"]
    prompts, merged = {}, {}
    for name, extra in (("one", ["hydra.run.dir=one"]),
                        ("four", ["-m", "replay.shards=4", "replay.shard=range(0,4)", "hydra/launcher=joblib",
                                  "hydra.launcher.n_jobs=4", "hydra.sweep.dir=four",
                                  f"replay.start_at={time.time() + 6}"])):
        with FakeServer(vocab=1000) as server:
            result = run_cli("replay", *extra, *common, f"engine.base_url={server.url}", cwd=tmp_path,
                             timeout=120)
            assert result.returncode == 0, result.stderr[-2000:]
        prompts[name] = Counter((s, tuple(ids)) for s, ids in server.received)
    merge = run_cli("replay-merge", "four", cwd=tmp_path, timeout=120)
    assert merge.returncode == 0, merge.stderr
    merged["one"] = pl.read_parquet(tmp_path / "one" / "requests.parquet")
    merged["four"] = pl.read_parquet(tmp_path / "four" / "merged" / "requests.parquet")
    assert prompts["one"] == prompts["four"] and sum(prompts["one"].values()) == 24
    cols = ["request_id", "session_id", "input_tokens", "output_tokens", "server_prompt_tokens"]
    one, four = (merged[k].select(cols).sort("request_id") for k in ("one", "four"))
    assert one.equals(four)
    assert merged["four"]["error"].null_count() == 24
    shards = sorted(p for p in (tmp_path / "four").iterdir() if p.name.isdigit())
    per_shard = [pl.read_parquet(p / "requests.parquet")["session_id"].unique().to_list() for p in shards]
    for k, sessions in enumerate(per_shard):
        assert all(shard_of(s, 4) == k for s in sessions)
    summary = json.loads((tmp_path / "four" / "merged" / "summary.json").read_text())
    assert summary["calls"] == 24 and summary["sessions"] == 8 and len(summary["engine_stats"]["shards"]) == 4
