"""A 3-call trace replayed on a machine with round numbers: reuse, prefill, TTFT and the API
bill worked out by hand, with and without a TTL expiry between calls."""

import json

import polars as pl
import pytest
from replaykit import SIMPLE, compose_cfg, simple_decode_step_s, simple_prefill_s
from tracekit import row, write

from replay.api_cache import ApiPricing, ProviderPromptCache
from replay.app import run

prefill = simple_prefill_s


@pytest.fixture
def trace(tmp_path):
    def make(think_s):
        return write(tmp_path / f"t{think_s}.parquet", [
            row("a", 0, 10, [1, 2], output_tokens=2, arrival_s=0.0),
            row("a", 1, 16, [3], parent="a-0", kept=3, arrival_s=think_s, think_s=think_s),
            row("b", 0, 13, [1, 7, 2], arrival_s=1.0),
        ])
    return make


@pytest.mark.parametrize("think_s,api_a1", [
    (400.0, 16 * 1.25),           # both entries expired (a-0's at 300, b-0's refresh at 301): write 16
    (100.0, 8 * 0.1 + 8 * 1.25),  # [1, 2] still live: read 8, write 8 (outputs are not in the API cache)
])
def test_three_calls_by_hand(tmp_path, trace, think_s, api_a1):
    path = trace(think_s)
    out = tmp_path / f"run{think_s}"
    out.mkdir()
    summary = run(compose_cfg([*SIMPLE, "trace=file", f"trace.path={path}"]), out)
    df = pl.read_parquet(out / "requests.parquet").sort("request_id")
    by = {r["request_id"]: r for r in df.iter_rows(named=True)}

    # a-0: nothing cached. b-0 at t=1: block 1 hit (4 tokens). a-1: a-0's prompt [1, 2] and its
    # output block: 3 blocks, 12 tokens (and (16-1)//4 = 3 may be reused).
    assert [by[k]["reused_tokens"] for k in ("a-0", "a-1", "b-0")] == [0, 12, 4]
    assert [by[k]["prefilled_tokens"] for k in ("a-0", "a-1", "b-0")] == [10, 4, 9]
    assert summary["reuse"] == pytest.approx(16 / 39)
    assert summary["prefilled_tokens"] == 23

    assert by["a-0"]["ttft_s"] == pytest.approx(prefill(10, 0), rel=1e-9)
    assert by["b-0"]["ttft_s"] == pytest.approx(prefill(9, 4), rel=1e-9)
    assert by["a-1"]["ttft_s"] == pytest.approx(prefill(4, 12), rel=1e-9)
    # a-0 decodes one more token: weights 5e8 B vs 2 x 5e8 FLOPs -> compute-bound, ~1 ms
    tpot = simple_decode_step_s(11)
    assert by["a-0"]["finish_s"] == pytest.approx(prefill(10, 0) + tpot, rel=1e-9)
    # closed mode: a-1 is sent think_s after a-0 finished
    assert by["a-1"]["arrival_s"] == pytest.approx(by["a-0"]["finish_s"] + think_s)

    # Haiku 4.5 prices per token x 1e6: input 1, 5-min write 1.25, read 0.1, output 5
    api = {"a-0": 10 * 1.25 + 2 * 5, "b-0": 4 * 0.1 + 9 * 1.25, "a-1": api_a1}
    for k, usd in api.items():
        assert by[k]["api_cost_usd"] * 1e6 == pytest.approx(usd)
    assert summary["api_usd"] * 1e6 == pytest.approx(sum(api.values()))
    assert summary["no_reuse_api_usd"] * 1e6 == pytest.approx(39 * 1.0 + 2 * 5)
    assert json.loads((out / "summary.json").read_text())["calls"] == 3


def test_five_minute_ttl_lapses_after_301_s_and_a_hit_refreshes_it(load_conf):
    cfg = load_conf("pricing", "anthropic_haiku_4_5")["api"]
    cfg["min_tokens"] = 1
    blocks = __import__("numpy").array([1, 2], dtype="uint64")

    cache = ProviderPromptCache(ApiPricing.from_cfg(cfg), block_size=4)
    assert cache.call(blocks, 0.0, 8, 0).written_tokens == 8
    assert cache.call(blocks, 301.0, 8, 0).cached_tokens == 0  # 301 s of silence: gone

    cache = ProviderPromptCache(ApiPricing.from_cfg(cfg), block_size=4)
    cache.call(blocks, 0.0, 8, 0)
    assert cache.call(blocks, 299.0, 8, 0).cached_tokens == 8  # a hit at 299 s ...
    assert cache.call(blocks, 598.0, 8, 0).cached_tokens == 8  # ... refreshed the entry to 599 s
    assert cache.call(blocks, 899.0, 8, 0).cached_tokens == 0


def test_minimum_length_and_increments(load_conf):
    cfg = load_conf("pricing", "openai_gpt_5")["api"]
    cache = ProviderPromptCache(ApiPricing.from_cfg(cfg), block_size=64)
    import numpy as np
    short = np.arange(10, dtype=np.uint64)  # 640 tokens: below the 1,024 minimum
    cache.call(short, 0.0, 650, 0)
    assert cache.call(short, 1.0, 650, 0).cached_tokens == 0
    long = np.arange(100, 140, dtype=np.uint64)  # 40 blocks = 2,560 tokens
    cache.call(long[:20], 0.0, 1300, 0)  # 20 blocks = 1,280 tokens cached
    got = cache.call(long, 1.0, 2600, 0)
    assert got.cached_tokens == 1280 and got.written_tokens == 0  # 1,280 is 10 x 128
    assert got.cost_usd == pytest.approx((1280 * 0.125 + 1320 * 1.25) / 1e6)


def test_a_call_waiting_for_a_slot_holds_no_kv(tmp_path):
    # One slot, HBM of 3 blocks (4 tokens, 4 bytes a token: 16 bytes a block). x-0 and y-0 arrive
    # together with disjoint 3-block prompts; y-0 waits for x-0's slot, so only one call's blocks
    # are ever pinned: no overflow, and y-0's start evicts x-0's 3 unpinned blocks (12 tokens).
    path = write(tmp_path / "t.parquet", [
        row("x", 0, 12, [1, 2, 3], arrival_s=0.0),
        row("y", 0, 12, [4, 5, 6], arrival_s=0.0),
    ])
    out = tmp_path / "run"
    out.mkdir()
    summary = run(compose_cfg([*SIMPLE, "trace=file", f"trace.path={path}",
                               "cache.tiers.0.capacity_bytes=48"]), out)
    by = {r["request_id"]: r for r in pl.read_parquet(out / "requests.parquet").iter_rows(named=True)}
    assert by["y-0"]["start_s"] == pytest.approx(by["x-0"]["finish_s"])
    assert by["y-0"]["queue_s"] == pytest.approx(prefill(12, 0))
    hbm = summary["engine_stats"]["tiers"]["hbm"]
    assert hbm["overflow_tokens"] == 0
    assert hbm["evicted_tokens"] == 12 and hbm["held_tokens_at_end"] == 12
