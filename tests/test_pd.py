"""Prefill/decode disaggregation (deployment=pd): TTFT by hand, the link's transfer time, TPOT
against colocation, every call once, the invariants on both pools."""

import polars as pl
import pytest
from replaykit import SIMPLE, compose_cfg, simple_prefill_s
from tracekit import row, write

from engines.offload.fabric import Fabric
from engines.specs import ConfigError
from replay.app import build_engine, run
from replay.runner import ReplayOptions, replay
from traces.synth import generate, load_config

PD = ["engine=offload", "deployment=pd"]
# SIMPLE (tests/replaykit.py) on the offload engine, one GPU per pool
SIMPLE_PD = [*PD, *[o for o in SIMPLE if not o.startswith("engine.")],
             "deployment.prefill.tp=1", "deployment.decode.tp=1"]


def run_in(tmp_path, name, overrides):
    out = tmp_path / name
    out.mkdir()
    return run(compose_cfg(overrides), out), out


def test_a_transfer_of_b_bytes_over_a_link_of_r_takes_b_over_r_plus_its_latency():
    fabric = Fabric()
    out, into = fabric.resource("prefill0.kv_out", 4e9), fabric.resource("instance0.kv_in", 1e9)
    fabric.start(1, [(out, 2.0), (into, 1.0)], 3e9, 0.25, now=10.0)  # 3 GB per GPU, 2 GPUs
    # per GPU: its own 1 GB/s NIC in, half of the 4 GB/s out: 3 s + the latency
    assert fabric.next_completion() == pytest.approx(10.0 + 3.0 + 0.25)
    fabric.start(2, [(into, 1.0)], 1e9, 0.0, now=10.0)  # a second flow halves the NIC's share
    assert fabric.next_completion() == pytest.approx(10.0 + 2.0)  # 1 GB at 0.5 GB/s


def test_a_single_calls_ttft_is_prefill_plus_transfer_plus_the_first_decode_step(tmp_path):
    n = 1000
    path = write(tmp_path / "one.parquet", [row("s", 0, n, list(range(1, 251)), output_tokens=5)])
    s, out = run_in(tmp_path, "pd", [*SIMPLE_PD, "trace=file", f"trace.path={path}", "replay.baseline=off",
                                     "deployment.link.nic_bw=1000", "deployment.link.efficiency=0.5",
                                     "deployment.link.latency_s=0.25"])
    r = pl.read_parquet(out / "requests.parquet").row(0, named=True)
    kv = n * 2 * 1 * 1 * 1 * 2  # K and V x 1 layer x 1 KV head x width 1 x 2 bytes
    transfer = kv / (1000 * 0.5) + 0.25  # 4,000 bytes at 500 bytes/s: 8 s, + latency
    prefill = simple_prefill_s(n)  # the prompt on the prefill instance
    first_step = simple_prefill_s(1, n - 1)  # the decode instance computes the last position again
    assert r["transfer_bytes"] == kv
    assert r["prefill_s"] == pytest.approx(prefill, rel=1e-9)
    assert r["transfer_s"] == pytest.approx(transfer, rel=1e-9)
    assert r["first_step_s"] == pytest.approx(first_step, rel=1e-6)
    assert r["ttft_s"] == pytest.approx(prefill + transfer + first_step, rel=1e-6)
    assert r["queue_s"] == 0 and r["decode_queue_s"] == 0
    assert s["gpus"] == 2 and s["pools"]["prefill"]["gpus"] == 1 and s["pools"]["decode"]["gpus"] == 1
    assert s["capacity_bytes_by_tier"] == {"hbm": pytest.approx(2 * (1e12 * 0.9 - 5e8))}  # both pools' HBM


def test_layerwise_overlap_leaves_only_what_the_link_could_not_carry_during_the_prefill(tmp_path):
    n = 1000
    path = write(tmp_path / "one.parquet", [row("s", 0, n, list(range(1, 251)), output_tokens=2)])
    kv = 16_000  # 4 layers x 4 bytes per token
    for nic_bw, rate in ((1000, 500), (1e6, 5e5)):
        _, out = run_in(tmp_path, f"bw{nic_bw:g}", [
            *SIMPLE_PD, "trace=file", f"trace.path={path}", "replay.baseline=off", "model.layers=4",
            f"deployment.link.nic_bw={nic_bw}", "deployment.link.efficiency=0.5",
            "deployment.link.latency_s=0", "deployment.link.layerwise_overlap=true"])
        r = pl.read_parquet(out / "requests.parquet").row(0, named=True)
        assert r["transfer_bytes"] == kv
        # the link carried rate x prefill during the prefill; at least the last layer's KV is left
        left = max(kv - rate * r["prefill_s"], kv / 4)
        assert r["transfer_s"] == pytest.approx(left / rate, rel=1e-9)
    assert left == kv / 4  # a fast link hides all but the last layer


def test_pd_needs_the_offload_engine_and_known_hardware(tmp_path):
    with pytest.raises(ConfigError, match="engine=offload"):
        build_engine(compose_cfg(["deployment=pd"]), 64)
    with pytest.raises(ConfigError, match="no hardware 'nope'"):
        build_engine(compose_cfg([*PD, "deployment.prefill.hardware=nope"]), 64)


def test_without_reuse_long_prompts_decode_faster_on_a_separate_pool_at_the_same_gpu_count(tmp_path):
    # 12 calls of 30k fresh tokens, one a second, 300 tokens out: colocated, each prefill chunk
    # (8,192 tokens) stalls every call decoding on its instance; split, decode steps run alone
    rows = [row(f"s{i}", 0, 30_000, list(range(1000 * i + 1, 1000 * i + 469)), output_tokens=300,
                arrival_s=float(i)) for i in range(12)]
    path = write(tmp_path / "long.parquet", rows, block_size=64)
    base = ["engine=offload", "model=llama3_1_8b", "hardware=h100_sxm", "trace=file", f"trace.path={path}",
            "replay.mode=open", "replay.baseline=off", "plots=false"]
    colo, _ = run_in(tmp_path, "colo", [*base, "parallel.tp=1", "instances=2", "engine.router=least_loaded"])
    pd, _ = run_in(tmp_path, "pd", [*base, "deployment=pd", "deployment.prefill.tp=1",
                                    "deployment.decode.tp=1"])
    assert colo["gpus"] == pd["gpus"] == 2
    assert pd["tpot_s"]["p99"] < 0.5 * colo["tpot_s"]["p99"]
    assert pd["calls"] == colo["calls"] == 12


@pytest.fixture(scope="module")
def small_coding(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "small.parquet"
    generate(load_config("coding_agent", ["sessions=3", "seed=3", "subagent.probability=0.3",
                                          "human_prompts=[1,1]", "calls_per_prompt.median=5"]), path)
    return path


@pytest.mark.parametrize("options", [
    [], ["engine.router=cache_aware", "deployment.prefill.count=2", "deployment.decode.count=2"],
    ["engine.preemption=swap", "deployment.link.layerwise_overlap=true"],
], ids=lambda o: " ".join(o) or "default")
def test_every_call_completes_once_and_both_pools_hold_their_invariants(small_coding, options):
    # tight HBM on both pools: evictions to DRAM and loads back on the prefill pool
    cfg = compose_cfg([*PD, "cache=hbm_dram", "cache.tiers.0.capacity_bytes=2e10",
                       "cache.tiers.1.capacity_bytes=3e11", "engine.check_invariants=true", *options])
    engine = build_engine(cfg, 64)
    done = []
    result = replay(str(small_coding), engine, ReplayOptions(progress=False, session_rate_per_s=1.0),
                    None, lambda call, request, c: done.append(c))
    ids = [c.request_id for c in done]
    assert result.finished == len(ids) == len(set(ids)) == pl.read_parquet(small_coding).height
    engine.check(final=True)  # after every event each pool held them; at the end nothing is held
    assert all(c.first_token_s >= c.start_s + c.extra["prefill_s"] + c.extra["transfer_s"] for c in done)
    assert result.engine_stats["tiers"]["dram"]["loaded_tokens"] > 0  # the prefill pool reads DRAM
    assert result.engine_stats["kv_transfer_bytes"] == pytest.approx(
        sum(c.extra["transfer_bytes"] for c in done))


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_call_preempted_on_the_decode_pool_recomputes_or_swaps_there(tmp_path, mode):
    # three 400-token prompts, 2,000 tokens out each, on a decode HBM of 750 blocks of 4 tokens:
    # the third call's growth does not fit and it is preempted
    path = write(tmp_path / "three.parquet", [row(f"s{i}", 0, 400, list(range(1000 * i + 1, 1000 * i + 101)),
                                                  output_tokens=2000) for i in range(3)])
    swap = ["engine.preemption=swap", "cache=hbm_dram", "cache.tiers.1.capacity_bytes=1e6"]
    cfg = compose_cfg([*SIMPLE_PD, *(swap if mode == "swap" else []), "cache.tiers.0.capacity_bytes=12000",
                       "engine.check_invariants=true"])
    engine = build_engine(cfg, 4)
    done = []
    replay(str(path), engine, ReplayOptions(progress=False, mode="open"), None,
           lambda call, request, c: done.append(c))
    engine.check(final=True)
    assert engine.decode.preemptions == 1 and engine.prefill.preemptions == 0
    victim = next(c for c in done if c.preemptions)
    # the prefill pool computed 400 positions, the decode pool the last one again for its logits;
    # recompute: the victim's context is computed again on the decode pool (it is not sent twice)
    assert victim.prefilled_tokens == 401 + victim.recomputed_tokens
    assert (victim.recomputed_tokens > 400) if mode == "recompute" else (victim.recomputed_tokens == 0)
    assert all(c.prefilled_tokens == 401 for c in done if c is not victim)
