"""The KV-offload engine against the analytic one, the ideal, conservation laws and crossovers."""

import math

import numpy as np
import polars as pl
import pytest
from conftest import conf
from replaykit import compose_cfg
from tracekit import row, write

from engines.roofline import Roofline
from engines.specs import HardwareSpec, ModelSpec, TierSpec
from replay.app import build_engine, run
from replay.runner import ReplayOptions, replay
from traces.stats import inspect
from traces.synth import generate, load_config

H100_70B = ["model=llama3_1_70b", "hardware=h100_sxm", "parallel.tp=8"]


def run_in(tmp_path, name, overrides):
    out = tmp_path / name
    out.mkdir()
    return run(compose_cfg(overrides), out), out


@pytest.fixture(scope="module")
def coding(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "coding.parquet"
    generate(load_config("coding_agent", ["sessions=16", "seed=5", "subagent.probability=0.1"]), path)
    return path


def test_single_call_ttft_matches_the_analytic_engine(tmp_path):
    path = write(tmp_path / "one.parquet", [row("s", 0, 100_000, list(range(1, 1563)),
                                                output_tokens=50)], block_size=64)
    base = [*H100_70B, "trace=file", f"trace.path={path}"]
    a, _ = run_in(tmp_path, "a", ["engine=analytic", *base])
    o, _ = run_in(tmp_path, "o", ["engine=offload", *base])
    assert o["ttft_s"]["p50"] == pytest.approx(a["ttft_s"]["p50"], rel=0.01)
    assert a["ttft_s"]["p50"] > 3.4  # never below the bf16 peak floor


def test_unlimited_hbm_reuse_equals_the_ideal(tmp_path, coding):
    s, _ = run_in(tmp_path, "inf", ["engine=offload", "cache=hbm_only", "cache.tiers.0.capacity_bytes=inf",
                                    "trace=file", f"trace.path={coding}"])
    assert s["reuse"] == inspect(coding)["ideal_reuse"]


def test_every_call_once_and_loads_never_exceed_stores(tmp_path, coding):
    s, out = run_in(tmp_path, "tiers", [
        "engine=offload", "cache=hbm_dram_nvme", "cache.tiers.0.capacity_bytes=3e11",
        "cache.tiers.1.capacity_bytes=2e12", "replay.session_rate_per_s=0.5", "trace=file",
        f"trace.path={coding}"])
    df = pl.read_parquet(out / "requests.parquet")
    trace = pl.read_parquet(coding)
    assert df.height == trace.height and df["request_id"].n_unique() == trace.height
    tiers = s["engine_stats"]["tiers"]
    assert tiers["dram"]["loaded_tokens"] > 0  # the test exercises the lower tiers
    for name in ("dram", "nvme"):
        assert tiers[name]["loaded_tokens"] <= tiers[name]["written_tokens"]
    assert (df["first_token_s"] >= df["start_s"]).all() and (df["finish_s"] >= df["first_token_s"]).all()
    assert (df["start_s"] >= df["arrival_s"] - 1e-9).all()
    assert s["loaded_bytes"] == pytest.approx(float(df["loaded_bytes"].sum()))
    links = s["engine_stats"]["link_bytes"]
    # every load crosses the GPUs' host links inwards; every write to DRAM crosses them outwards
    kv_token = 327_680
    crossing = lambda end: sum(v for k, v in links.items() if k.endswith(end))  # noqa: E731
    assert crossing("host_in") == pytest.approx(s["loaded_bytes"], rel=1e-9)
    assert crossing("host_out") == pytest.approx(tiers["dram"]["written_tokens"] * kv_token, rel=1e-9)
    assert crossing("nvme.write") == pytest.approx(tiers["nvme"]["written_tokens"] * kv_token, rel=1e-9)


def test_engine_state_is_clean_after_a_replay(coding):
    cfg = compose_cfg(["engine=offload", "cache=hbm_dram", "cache.tiers.0.capacity_bytes=3e11",
                       "replay.session_rate_per_s=0.5"])
    engine = build_engine(cfg, 64)
    result = replay(str(coding), engine, ReplayOptions(progress=False, session_rate_per_s=0.5),
                    lambda *a: None, lambda *a: None)
    assert result.finished == pl.read_parquet(coding).height
    for inst in engine.instances:
        assert inst.cache.pinned == 0 and inst.cache.reserved == 0
        assert not inst.running and not inst.waiting
        assert inst.cache.used[0] <= inst.cache.capacity[0]


def test_a_call_preempted_before_it_prefilled_anything_still_finishes(tmp_path):
    # b-0 is admitted with its prompt's cached head (a-0's 2 blocks) as context, then preempted
    # before any of its own tokens were computed: its readmission must still prefill the rest
    # of its prompt (it stalled forever when the recompute target was cut to that context).
    path = write(tmp_path / "t.parquet", [row("a", 0, 200, [1, 2, 3], arrival_s=0.0),
                                          row("b", 0, 300, [1, 2, 3, 4], arrival_s=10.0)], block_size=64)
    engine = build_engine(compose_cfg(["engine=offload", "cache=hbm_only", *H100_70B]), 64)
    calls = {r["request_id"]: r for r in pl.read_parquet(path).iter_rows(named=True)}
    from engines.base import Request

    def request(rid, t):
        r = calls[rid]
        blocks = np.array(r["new_block_hashes"], dtype=np.uint64)
        return Request(rid, r["session_id"], 0, "test", t, r["input_tokens"], 1, blocks, 64,
                       np.empty(0, dtype=np.uint64))

    engine.submit(request("a-0", 0.0), 0.0)
    assert [c.request_id for c in engine.advance(5.0)] == ["a-0"]
    engine.submit(request("b-0", 10.0), 10.0)
    inst = engine.instances[0]
    (seq,) = inst.running
    assert seq.context == 3 * 64 and seq.prefill_left == 300 - 3 * 64  # 3 of 4 blocks cached
    engine._preempt(inst, seq, 10.0)
    inst.step = None
    engine._plan(inst, 10.0)
    done = engine.advance(20.0)
    assert [c.request_id for c in done] == ["b-0"] and done[0].prefilled_tokens == 300 - 3 * 64


def test_a_prompt_bigger_than_hbm_waits_for_an_idle_instance_then_runs(tmp_path):
    # HBM of 10 blocks. b-0 (20 blocks) arrives while a-0 decodes: it cannot fit, so it waits;
    # once a-0 is done nothing else will ever free room, so it runs alone, overflowing HBM.
    path = write(tmp_path / "t.parquet", [
        row("a", 0, 5 * 64 + 10, list(range(1, 6)), output_tokens=200, arrival_s=0.0),
        row("b", 0, 20 * 64 + 10, list(range(100, 120)), output_tokens=5, arrival_s=0.01),
    ], block_size=64)
    hbm = 10 * 327_680 * 64  # ten 64-token blocks of Llama-3.1-70B KV, whole instance
    s, out = run_in(tmp_path, "big", ["engine=offload", "cache=hbm_only", *H100_70B, "trace=file",
                                      f"trace.path={path}", f"cache.tiers.0.capacity_bytes={hbm}"])
    by = {r["request_id"]: r for r in pl.read_parquet(out / "requests.parquet").iter_rows(named=True)}
    assert s["calls"] == 2
    assert by["b-0"]["start_s"] >= by["a-0"]["finish_s"]
    assert s["engine_stats"]["tiers"]["hbm"]["overflow_tokens"] > 0


def test_littles_law_on_a_steady_open_loop(tmp_path):
    path = tmp_path / "email.parquet"
    generate(load_config("email_drafting", [  # single drafts, Poisson arrivals: a stationary load
        "sessions=1500", "seed=1", "arrival.process=poisson", "arrival.rate_per_s=2.0",
        "arrival.diurnal=null", "burst_sessions=[1,1]", "revision_round_probs=[1.0]"]), path)
    s, out = run_in(tmp_path, "open", ["engine=offload", "model=llama3_1_8b", "parallel.tp=1",
                                       "replay.mode=open", "engine.timeline_interval_s=1.0",
                                       "trace=file", f"trace.path={path}"])
    df = pl.read_parquet(out / "requests.parquet")
    timeline = pl.read_parquet(out / "timeline.parquet")
    start, end = float(df["arrival_s"].min()), float(df["finish_s"].max())
    window = timeline.filter((pl.col("time_s") >= start) & (pl.col("time_s") <= end))
    in_system = float((window["running"] + window["waiting"]).mean())
    rate = df.height / (end - start)
    time_in_system = float((df["finish_s"] - df["arrival_s"]).mean())
    assert in_system > 1.0  # a real load, not an idle engine
    assert in_system == pytest.approx(rate * time_in_system, rel=0.05)


def test_crossover_reload_from_dram_beats_recompute_and_a_slow_tier_does_not():
    m = ModelSpec.from_cfg(conf("model", "llama3_1_70b"))
    hw = HardwareSpec.from_cfg(conf("hardware", "h100_sxm"))
    roof = Roofline(m, hw, 8)
    n = 100_000
    per_gpu = n * m.kv_bytes_per_token_per_gpu(8)
    dram = TierSpec("dram", 1e12, 64e9, 64e9, 1e-5)
    slow = TierSpec("slow", 1e12, 1e9 / 8, 1e9 / 8, 1e-3)  # 1 GB/s for the instance, 1/8 per GPU
    recompute = roof.prefill_s(n)
    assert recompute / roof.load_s(dram, per_gpu) > 5  # several times faster to reload
    assert roof.load_s(slow, per_gpu) > recompute  # a 1 GB/s tier is slower than recomputing


def test_if_faster_recomputes_instead_of_loading_from_a_slow_tier(tmp_path):
    """a-0 fills a small HBM; b-0 pushes most of it down to a 1 GB/s tier; a-1 extends a-0."""
    n = 100_000 // 64
    path = write(tmp_path / "t.parquet", [
        row("a", 0, n * 64, list(range(1, n + 1)), output_tokens=1, arrival_s=0.0),
        row("b", 0, n * 64, list(range(10**6, 10**6 + n)), output_tokens=1, arrival_s=100.0),
        row("a", 1, n * 64 + 640, list(range(2 * 10**6, 2 * 10**6 + 10)), parent="a-0", kept=n,
            output_tokens=1, arrival_s=200.0, think_s=150.0),
    ], block_size=64)
    a1 = {}
    for policy in ("always", "if_faster"):
        _, out = run_in(tmp_path, policy, [
            *H100_70B, "engine=offload", f"engine.load_policy={policy}", "replay.mode=open",
            "cache=hbm_dram", "cache.tiers.0.capacity_bytes=4e10", "cache.tiers.1.read_bw=1.25e8",
            "trace=file", f"trace.path={path}"])
        requests = pl.read_parquet(out / "requests.parquet")
        a1[policy] = requests.filter(pl.col("request_id") == "a-1").row(0, named=True)
    loaded, recomputed = a1["always"], a1["if_faster"]
    assert loaded["reused_tokens_dram"] > 50_000 and loaded["ttft_s"] > 10  # GBs per GPU at 1/8 GB/s
    assert recomputed["reused_tokens_dram"] == 0 and recomputed["loaded_bytes"] == 0
    assert recomputed["reused_tokens_hbm"] == loaded["reused_tokens_hbm"]
    assert recomputed["prefilled_tokens"] == loaded["prefilled_tokens"] + loaded["reused_tokens_dram"]
    assert recomputed["ttft_s"] < loaded["ttft_s"] / 2


def test_timeline_and_storage_cost(tmp_path, coding):
    s, out = run_in(tmp_path, "tl", ["engine=offload", "cache=hbm_dram", "cache.tiers.0.capacity_bytes=3e11",
                                     "replay.session_rate_per_s=0.5", "trace=file", f"trace.path={coding}"])
    timeline = pl.read_parquet(out / "timeline.parquet")
    assert {"time_s", "hbm_bytes", "dram_bytes", "instance0.host_in_util", "running", "waiting"} \
        <= set(timeline.columns)
    assert 0 < timeline["instance0.host_in_util"].max() <= 1.0
    assert timeline["hbm_bytes"].max() <= 3e11 + 1
    assert s["storage_usd_by_tier"]["dram"] > 0
    byte_s = s["engine_stats"]["byte_seconds_by_tier"]["dram"]
    assert s["storage_usd_by_tier"]["dram"] == pytest.approx(byte_s / 1e12 / (30.44 * 86400) * 60.0)
    assert not math.isnan(s["self_hosted_busy_usd"]) and not math.isnan(s["self_hosted_provisioned_usd"])
    assert np.isfinite(timeline["hbm_bytes"].to_numpy()).all()


def test_policies_routers_prefetch_and_swap_all_complete(tmp_path, coding):
    base = ["engine=offload", "cache=hbm_dram", "cache.tiers.0.capacity_bytes=2e11",
            "replay.session_rate_per_s=1", "trace=file", f"trace.path={coding}"]
    n = pl.read_parquet(coding).height
    results = {}
    for name, extra in {
        "lru": [], "ttl_pin": ["engine.eviction=ttl_pin"], "session_aware": ["engine.eviction=session_aware"],
        "prefetch": ["engine.prefetch=true"], "swap": ["engine.preemption=swap"],
        "inclusive": ["engine.inclusive=true"], "admit2": ["engine.admit_min_uses=2"],
        "overlap": ["engine.overlap_load=true"], "tight": ["cache.tiers.0.capacity_bytes=1e11"],
        **{r: ["instances=4", f"engine.router={r}"] for r in
           ("round_robin", "least_loaded", "session_affinity", "cache_aware")},
    }.items():
        s, _ = run_in(tmp_path, name, [*base, *extra])
        assert s["calls"] == n, name
        results[name] = s
    # spreading a session's calls over instances loses its prefix; following it keeps it
    assert results["round_robin"]["reuse"] < results["session_affinity"]["reuse"]
    assert results["cache_aware"]["reuse"] > results["round_robin"]["reuse"]
    assert results["prefetch"]["engine_stats"]["prefetched_tokens"] > 0
    assert results["tight"]["engine_stats"]["preemptions"] > 0  # running calls outgrow half the HBM
    # write-through writes each block to DRAM once, as it is stored; eviction then moves nothing
    inclusive = results["inclusive"]["engine_stats"]["tiers"]
    assert inclusive["dram"]["written_tokens"] == inclusive["hbm"]["written_tokens"]
    assert results["admit2"]["engine_stats"]["tiers"]["hbm"]["dropped_tokens"] > 0
    assert results["overlap"]["ttft_s"]["p99"] <= results["lru"]["ttft_s"]["p99"] * 1.001


@pytest.fixture(scope="module")
def small_coding(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "small.parquet"
    generate(load_config("coding_agent", ["sessions=3", "seed=3", "subagent.probability=0.3"]), path)
    return path


TIGHT = ["cache.tiers.0.capacity_bytes=1.5e11", "cache.tiers.1.capacity_bytes=3e11"]


def test_session_aware_eviction_keeps_shared_runs_in_hbm_on_the_analytic_engine(small_coding):
    # The analytic engine passed no policy parameters, so session_aware had a bonus of 0: plain
    # LRU, with the same figures. With its 600 s bonus, shared runs outlive sessions' own.
    reused = {}
    for policy in ("lru", "session_aware"):
        engine = build_engine(compose_cfg(["engine=analytic", "cache=hbm_dram_nvme", *TIGHT,
                                           f"cache.eviction={policy}"]), 64)
        replay(str(small_coding), engine, ReplayOptions(progress=False, session_rate_per_s=1.0), None,
               lambda row, request, c, policy=policy: reused.setdefault(policy, []).append(
                   c.reused_tokens_by_tier))
        reused[policy] = {t: sum(r[t] for r in reused[policy]) for t in ("hbm", "dram")}
    assert reused["session_aware"]["hbm"] > reused["lru"]["hbm"]
    assert reused["session_aware"]["dram"] < reused["lru"]["dram"]


@pytest.mark.parametrize("options", [
    ["engine.eviction=lru"], ["engine.eviction=ttl_pin"], ["engine.eviction=session_aware"],
    ["engine.router=round_robin", "instances=2"], ["engine.router=least_loaded", "instances=2"],
    ["engine.router=cache_aware", "instances=2"], ["engine.prefetch=true"], ["engine.preemption=swap"],
    ["engine.inclusive=true"], ["engine.admit_min_uses=2"], ["engine.load_policy=if_faster"],
    ["engine.overlap_load=true"], ["cache=warehouse", "instances=2"], ["engine.prefix_reuse=false"],
    ["engine.admission=reserve"], ["cache=hbm_only"],
    ["engine=analytic", "engine.router=cache_aware", "instances=2"],
    ["engine=analytic", "engine.router=round_robin", "instances=2"],
    ["engine=analytic", "engine.router=least_loaded", "instances=2"],
    ["engine=analytic", "engine.overlap_load=true"], ["engine=analytic", "engine.prefix_reuse=false"],
    ["engine=analytic", "cache=hbm_only"], ["engine=analytic", "cache.eviction=ttl_pin"],
    ["engine=analytic", "cache.eviction=session_aware"],
], ids=lambda o: " ".join(o))
def test_the_invariant_checker_holds_for_every_policy_router_and_option(small_coding, options):
    cache = next((o for o in options if o.startswith("cache=")), "cache=hbm_dram_nvme")
    name = next((o for o in options if o.startswith("engine=")), "engine=offload")
    tight = TIGHT[:1] if cache == "cache=hbm_only" else TIGHT
    cfg = compose_cfg([name, cache, *tight, "engine.check_invariants=true",
                       *[o for o in options if not o.startswith(("cache=", "engine="))]])
    engine = build_engine(cfg, 64)
    result = replay(str(small_coding), engine, ReplayOptions(progress=False, session_rate_per_s=1.0),
                    lambda *a: None, lambda *a: None)
    assert result.finished == pl.read_parquet(small_coding).height
    engine.check(final=True)  # after every event it held; at the end nothing is left held
