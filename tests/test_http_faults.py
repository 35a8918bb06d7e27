"""engine=http against a small in-process fake server, for the faults a real server cannot be made
to show on demand: each is recorded on its call and the replay goes on."""

from __future__ import annotations

import json
import signal
import threading
import time

import polars as pl
import pytest

from replay.app import run
from tests.fake_server import FakeServer
from tests.replaykit import compose_cfg
from tests.tracekit import row, write

BS = 4
FAULTS = ["ok-a", "fault-500", "fault-hang", "fault-drop", "fault-badsse", "ok-b"]


def _trace(path):
    """Per session: a parent of 8 tokens (2 blocks) whose 4 output tokens complete a third block,
    and a child that keeps those 3 blocks and adds one (16 tokens)."""
    rows = []
    for k, s in enumerate(FAULTS):
        base = 1000 * (k + 1)
        rows.append(row(s, 0, 8, [base + 1, base + 2], output_tokens=4, arrival_s=0.01 * k))
        rows.append(row(s, 1, 16, [base + 9], parent=f"{s}-0", kept=3, output_tokens=2, think_s=0.0,
                        arrival_s=0.01 * k))
    (path / "trace").mkdir()
    return write(path / "trace" / "faults.parquet", rows, block_size=BS)


def _http(server: FakeServer, *more: str) -> list[str]:
    return ["engine=http", f"engine.base_url={server.url}", "engine.dialect=llamacpp",
            "engine.read_timeout_s=0.5", "engine.token_id_low=100", "plots=false", *more]


def test_faults_are_recorded_per_call_and_the_replay_goes_on(tmp_path):
    trace = _trace(tmp_path)
    with FakeServer(vocab=1000) as server:
        summary = run(compose_cfg([*_http(server), "trace=file", f"trace.path={trace}"]), tmp_path)
    df = pl.read_parquet(tmp_path / "requests.parquet")
    assert df.height == 12 and summary["calls"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.parquet", "summary.json", "trace"]
    by = {r["request_id"]: r for r in df.to_dicts()}
    for s in ("ok-a", "ok-b"):
        for turn, (inp, out) in enumerate([(8, 4), (16, 2)]):
            r = by[f"{s}-{turn}"]
            assert (r["http_status"], r["error"]) == (200, None)
            assert r["server_prompt_tokens"] == inp and r["server_output_tokens"] == out
            assert r["first_token_s"] is not None and r["finish_s"] >= r["first_token_s"]
    assert by["fault-500-0"]["http_status"] == 500 and by["fault-500-0"]["error"] == "HTTP 500: boom"
    assert by["fault-hang-0"]["error"] == "timeout"
    assert by["fault-drop-0"]["error"].startswith("ClientPayloadError")
    assert by["fault-badsse-0"]["error"] == "malformed event: {not json"
    for s in ("fault-500", "fault-hang", "fault-drop", "fault-badsse"):
        for turn in (0, 1):  # the child of a failed call is still sent (and fails the same way)
            r = by[f"{s}-{turn}"]
            assert r["server_cached_tokens"] is None and r["error"] is not None
            # 500 and hang streamed nothing; drop and badsse streamed a first token
            assert (r["ttft_s"] is None) == (s in ("fault-500", "fault-hang"))
    stats = json.loads((tmp_path / "summary.json").read_text())["engine_stats"]["http"]
    # the 4 failed parents returned no usable output ids: their children's kept output block is drawn
    assert stats["output_ids_missing_calls"] == 4 and stats["synthetic_output_blocks"] == 4
    assert stats["errors"] == {"HTTP 500": 2, "timeout": 2, "malformed event": 2, "ClientPayloadError": 2}


def test_a_child_keeps_its_parents_real_prompt_and_output_ids(tmp_path):
    trace = _trace(tmp_path)
    with FakeServer(vocab=1000) as server:
        run(compose_cfg([*_http(server), "trace=file", f"trace.path={trace}"]), tmp_path)
    sent = {}
    for session, ids in server.received:
        sent.setdefault(session, []).append(ids)
    parent, child = sent["ok-a"]
    assert len(parent) == 8 and len(child) == 16
    assert child[:8] == parent and child[8:12] == [7, 8, 9, 10]  # the fake's output ids 7, 8, ...
    assert all(100 <= t < 1000 for t in parent + child[12:])
    # ok-b's first two blocks have other hashes: other ids
    assert sent["ok-b"][0][:4] != parent[:4]


def test_an_unreachable_server_is_one_line(tmp_path):
    trace = _trace(tmp_path)
    cfg = compose_cfg(["engine=http", "engine.base_url=http://127.0.0.1:9", "trace=file",
                       f"trace.path={trace}", "plots=false"])
    from engines.specs import ConfigError
    with pytest.raises(ConfigError, match="cannot read http://127.0.0.1:9/v1/models"):
        run(cfg, tmp_path)


def test_report_puts_server_reuse_beside_simulated_reuse_per_call(tmp_path):
    trace = _trace(tmp_path)
    http_run, sim_run = tmp_path / "http", tmp_path / "analytic"
    http_run.mkdir()
    sim_run.mkdir()
    with FakeServer(vocab=1000) as server:  # the fake computes every prompt: cache_n 0
        run(compose_cfg([*_http(server), "trace=file", f"trace.path={trace}"]), http_run)
    run(compose_cfg(["trace=file", f"trace.path={trace}", "plots=false", "replay.baseline=off"]), sim_run)
    from replay.report import build
    result = build([http_run, sim_run], tmp_path / "report")
    calls = pl.read_csv(tmp_path / "report" / "server_vs_simulated.csv").sort("request_id")
    # only the 4 calls without errors; the simulator reuses a child's 3 kept blocks of 4 tokens
    assert calls["request_id"].to_list() == ["ok-a-0", "ok-a-1", "ok-b-0", "ok-b-1"]
    assert calls["simulated_reused_tokens"].to_list() == [0, 12, 0, 12]
    assert calls["reuse_error_tokens"].to_list() == [0, -12, 0, -12]
    pair = result["server_vs_simulated"].row(0, named=True)
    assert pair["server_reuse"] == 0 and pair["simulated_reuse"] == pytest.approx(24 / 48)
    assert pair["calls_with_equal_reuse"] == 2


@pytest.mark.parametrize("args,message", [
    (["engine.dialect=grpc"], "engine.dialect must be one of openai, vllm, trtllm, sglang, llamacpp"),
    (["engine.token_id_low=5000"], "engine.token_id_low must be in [0, vocab_size = 1000)"),
    (["engine.api_key_env=AGENT_REPLAY_NO_SUCH_KEY"],
     "engine.api_key_env: environment variable AGENT_REPLAY_NO_SUCH_KEY is not set"),
    (["replay.shards=4", "replay.shard=4"], "replay.shard must be in [0, replay.shards) = [0, 4), got 4"),
])
def test_bad_http_config_is_one_line(tmp_path, args, message):
    from engines.specs import ConfigError
    trace = _trace(tmp_path)
    with FakeServer(vocab=1000) as server, pytest.raises(ConfigError) as err:
        run(compose_cfg([*_http(server), "trace=file", f"trace.path={trace}", *args]), tmp_path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_one_ctrl_c_stops_a_replay_waiting_on_a_slow_server(tmp_path):
    """The engine waits for a reply at most POLL_S at a time, then hands the runner a turn of
    its loop: a single Ctrl-C is seen there, not only once the slow call finishes."""
    (tmp_path / "trace").mkdir()
    trace = write(tmp_path / "trace" / "slow.parquet", [row("slow", 0, 8, [1001, 1002], output_tokens=4)],
                  block_size=BS)
    main = threading.main_thread().ident
    with FakeServer(vocab=1000, ttft_s=60) as server:
        press = threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT))
        press.start()
        start = time.monotonic()
        summary = run(compose_cfg(["engine=http", f"engine.base_url={server.url}", "engine.dialect=llamacpp",
                                   "engine.read_timeout_s=120", "engine.token_id_low=100", "plots=false",
                                   "trace=file", f"trace.path={trace}"]), tmp_path)
        took = time.monotonic() - start
        press.join()
    assert summary["interrupted"] and summary["calls"] == 0 and took < 20
