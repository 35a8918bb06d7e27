"""Causal simulation, worked out by hand: KV is reused only once it exists where it is read, an
instance's GPUs are shared by its calls, and writes take time."""

import numpy as np
import pytest
from replaykit import compose_cfg

from engines.base import Request
from replay.app import build_engine

H100_70B = ["model=llama3_1_70b", "hardware=h100_sxm", "parallel.tp=8"]
BS = 64
KV_GPU_TOKEN = 327_680 / 8  # Llama-3.1-70B bf16 KV per token, one of 8 GPUs' shard


def request(rid: str, blocks: np.ndarray, input_tokens: int, output_tokens: int = 1, t: float = 0.0,
            session: str | None = None) -> Request:
    return Request(rid, session or rid, 0, "test", t, input_tokens, output_tokens,
                   np.asarray(blocks, dtype=np.uint64), BS, np.empty(0, dtype=np.uint64))


def engine(*overrides: str):
    return build_engine(compose_cfg([*H100_70B, *overrides]), BS)


def run_until_done(eng, until: float = 1e6) -> dict:
    done = {c.request_id: c for c in eng.advance(until)}
    assert eng.next_event_time() is None
    return done


@pytest.mark.parametrize("prefix_blocks", [0, 312])
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_preempted_100k_call_prefills_all_it_did_not_find_cached(mode, prefix_blocks):
    # Preempted right after its first 8,192-token chunk. It used to find its whole prompt
    # "cached" on readmission (stored at admission, before any chunk computed it) and finish
    # after ~8.2k tokens of prefill with TTFT 0.27 s. Now it keeps only the 128 blocks it
    # computed (recompute) or wrote out (swap), and computes the rest: in all, its prompt less
    # what was cached before it was admitted (nothing, or a 312-block prefix another call left).
    eng = engine("engine=offload", "cache=hbm_dram", f"engine.preemption={mode}",
                 "engine.check_invariants=true")
    blocks = np.arange(1, 1563)  # 100,000 tokens: 1,562 full blocks
    if prefix_blocks:
        eng.submit(request("p", blocks[:prefix_blocks], prefix_blocks * BS + 10), 0.0)
        run_until_done(eng)
    t0 = eng.clock
    eng.submit(request("big", blocks, 100_000, t=t0), t0)
    inst = eng.instances[0]
    first_step_end = inst.step.end_s
    eng.advance(first_step_end)
    (seq,) = inst.running
    assert seq.context == prefix_blocks * BS + 8192 and seq.acquired.committed == prefix_blocks + 128
    inst.step = None  # the next step was planned: preempt before it runs
    eng._preempt(inst, seq, first_step_end)
    eng._plan(inst, first_step_end)
    done = run_until_done(eng)["big"]
    cached = prefix_blocks * BS
    assert done.prefilled_tokens == 100_000 - cached and done.recomputed_tokens == 0
    assert done.first_token_s - t0 >= eng.roofline.prefill_s(100_000 - cached, cached) * (1 - 1e-9)
    assert done.preemptions == 1
    eng.check(final=True)


def preempted_then_crowded_out(*overrides: str):
    """HBM of 200 blocks. Call a (180 blocks) is preempted after its first chunk computed 128 of
    them and held back while call b (190 blocks) runs to its end, taking HBM. Returns the
    engine, its instance and a's sequence, waiting to be readmitted."""
    hbm = 200 * BS * 327_680
    eng = engine("engine=offload", f"cache.tiers.0.capacity_bytes={hbm}", "engine.check_invariants=true",
                 *overrides)
    eng.submit(request("a", np.arange(1, 181), 180 * BS), 0.0)
    inst = eng.instances[0]
    t = inst.step.end_s
    eng.advance(t)
    (seq,) = inst.running
    assert seq.acquired.committed == 128
    inst.step = None
    eng._preempt(inst, seq, t)
    inst.waiting.popleft()  # hold it back while another call takes HBM
    eng._plan(inst, t)
    eng.submit(request("b", np.arange(1000, 1190), 190 * BS), t)
    run_until_done(eng)
    return eng, inst, seq


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_a_preempted_call_whose_blocks_left_hbm_loads_them_back(mode):
    # b pushes a's 128 computed blocks down to DRAM. Swap mode wrote all 128 out and loads all
    # 128 back; recompute mode finds those the tree kept (in DRAM, or still in HBM) and loads
    # those from DRAM. Neither computes them again.
    eng, inst, seq = preempted_then_crowded_out("cache=hbm_dram", f"engine.preemption={mode}")
    in_hbm, in_dram = inst.cache.lookup(np.arange(1, 181))
    assert in_hbm + in_dram == 128 and in_dram > 100  # b pushed most of them down
    inst.waiting.append(seq)
    eng._plan(inst, eng.clock)
    done = run_until_done(eng)["a"]
    loaded_blocks = 128 if mode == "swap" else in_dram
    assert done.loaded_bytes == loaded_blocks * BS * 327_680  # whole instance: 8 GPUs' shards
    assert done.recomputed_tokens == 0 and done.prefilled_tokens == 180 * BS
    eng.check(final=True)


def test_a_block_evicted_while_preempted_is_recomputed_and_counted():
    # b evicts a's 128 computed blocks (hbm_only: nowhere to go) before a returns, so a computes
    # them again: of its 128 computed blocks, those not kept are recomputed.
    eng, inst, seq = preempted_then_crowded_out("cache=hbm_only")
    kept = inst.cache.lookup(np.arange(1, 181))[0]
    assert kept < 128  # b evicted most of them
    inst.waiting.append(seq)
    eng._plan(inst, eng.clock)  # b's blocks go to make room; what it kept is in use, not evicted
    done = run_until_done(eng)["a"]
    assert done.recomputed_tokens == (128 - kept) * BS
    assert done.prefilled_tokens == 128 * BS + (180 - kept) * BS
    eng.check(final=True)


def test_a_call_waits_for_a_prefetch_still_in_flight():
    # a's prompt is pushed down to DRAM, 1,083 of its 1,562 blocks (written through as stored:
    # engine.inclusive, so bringing them back evicts nothing that must be written first). Its
    # child is prefetched 1 ms before it is sent; the 1,083 blocks take 52.2 ms over PCIe. The
    # child waits the 51.2 ms left, then prefills its 170 new tokens. (When a transfer counted
    # as landed at its start, load_s was 0 and TTFT 22 ms.)
    hbm = 2000 * BS * 327_680
    eng = engine("engine=offload", "cache=hbm_dram", f"cache.tiers.0.capacity_bytes={hbm}",
                 "engine.inclusive=true", "engine.prefetch=true", "engine.prefetch_lead_s=0.001",
                 "engine.check_invariants=true")
    a = request("a", np.arange(1, 1563), 100_000)
    eng.submit(a, 0.0)
    run_until_done(eng)
    eng.submit(request("b", np.arange(10_000, 11_500), 96_000, t=100.0), 100.0)
    run_until_done(eng)
    assert eng.instances[0].cache.lookup(a.blocks) == [479, 1083]
    eng.expect(a, 300.0)
    eng.advance(299.9995)
    assert eng.prefetched_blocks == 1083  # the prefetch began at 299.999
    child = request("a-1", np.concatenate([a.blocks, [99_001, 99_002]]), 100_000 + 2 * BS + 10, t=300.0,
                    session="a")
    eng.submit(child, 300.0)
    done = run_until_done(eng)["a-1"]
    dram, hw = eng.tiers[1], eng.hw
    transfer = dram.latency_s + 1083 * BS * KV_GPU_TOKEN / (dram.read_bw * hw.link_efficiency)
    assert transfer == pytest.approx(0.0522, abs=1e-4)  # 1e-5 + 2.84 GB / (64 GB/s x 0.85)
    assert done.prefilled_tokens == 170 and done.reused_tokens_by_tier == {"hbm": 1562 * BS, "dram": 0}
    assert done.load_s == pytest.approx(transfer - 0.001, rel=1e-9)  # what was left of it
    prefill = eng.roofline.prefill_s(170, 1562 * BS)
    assert done.first_token_s - 300.0 == pytest.approx(transfer - 0.001 + prefill, rel=1e-9)
    eng.check(final=True)


def test_sixteen_simultaneous_prompts_share_the_instance_on_both_simulators():
    # 16 distinct 26k-token prompts sent together: the analytic engine used to run them all at
    # full speed at once (every TTFT one prefill: 0.96 s under the timing model of then, 1.42 s
    # now). Prefills share the GPUs: the last TTFT is about 16 prefills.
    ttfts = {}
    for name in ("analytic", "offload"):
        eng = engine(f"engine={name}", "cache=hbm_dram", "engine.check_invariants=true")
        for i in range(16):
            eng.submit(request(f"c{i}", np.arange(i * 1000 + 1, i * 1000 + 407), 26_000, 1), 0.0)
        done = run_until_done(eng)
        ttfts[name] = max(c.first_token_s for c in done.values())
        eng.check(final=True)
    sixteen = 16 * engine("engine=analytic").roofline.prefill_s(26_000)
    assert ttfts["analytic"] == pytest.approx(ttfts["offload"], rel=0.15)
    assert ttfts["analytic"] == pytest.approx(sixteen, rel=0.15)


def test_a_lone_call_decodes_at_batch_one_on_the_analytic_engine():
    eng = engine("engine=analytic", "cache=hbm_dram")
    eng.submit(request("solo", np.arange(1, 157), 10_000, 101), 0.0)
    done = run_until_done(eng)["solo"]
    tpot = (done.finish_s - done.first_token_s) / 100
    assert tpot == pytest.approx(eng.roofline.decode_step_s(1, 10_000 + 101 / 2), rel=1e-12)
    assert done.gpu_s == pytest.approx(8 * (eng.roofline.prefill_s(10_000) + 100 * tpot), rel=1e-12)


def test_the_analytic_decode_batch_is_the_calls_decoding_at_the_time():
    # Two calls: the second's prefill runs after the first's (FCFS) and carries its decode; the
    # second then decodes beside the first: batch 2.
    eng = engine("engine=analytic", "cache=hbm_dram")
    eng.submit(request("x", np.arange(1, 157), 10_000, 2000), 0.0)
    eng.submit(request("y", np.arange(500, 656), 10_000, 11), 0.0)
    done = run_until_done(eng)
    x, y = done["x"], done["y"]
    roof = eng.roofline
    assert x.first_token_s == pytest.approx(roof.prefill_s(10_000), rel=1e-12)
    assert y.first_token_s > 2 * roof.prefill_s(10_000)  # after x's prefill, with x decoding along
    tpot_y = (y.finish_s - y.first_token_s) / 10
    ctx = (10_000 + 2000 / 2 + 10_000 + 11 / 2) / 2
    assert tpot_y == pytest.approx(roof.decode_step_s(2, ctx), rel=1e-12)


def test_a_slow_write_tier_slows_a_replay_that_demotes_through_it():
    # Llama-3.1-8B on one H100: HBM holds two of these 64k-token prompts; each new one must
    # demote an older one (8.4 GB of KV) through DRAM's write bandwidth before it is admitted:
    # ~8.4 s at 1 GB/s, ~0.15 s over PCIe, against a 3.6 s prefill.
    kv_token = 131_072
    hbm = 2.2 * 1000 * BS * kv_token
    ttft = {}
    for write_bw in (None, 1e9):
        eng = build_engine(compose_cfg([
            "model=llama3_1_8b", "hardware=h100_sxm", "parallel.tp=1", "engine=offload", "cache=hbm_dram",
            f"cache.tiers.0.capacity_bytes={hbm}", "engine.check_invariants=true",
            *([f"cache.tiers.1.write_bw={write_bw}"] if write_bw else [])]), BS)
        for i in range(6):
            eng.submit(request(f"p{i}", np.arange(i * 2000 + 1, i * 2000 + 1001), 1000 * BS, 1,
                               t=i * 0.01), i * 0.01)
            eng.advance((i + 1) * 0.01)
        done = run_until_done(eng)
        ttft[write_bw] = max(done[f"p{i}"].first_token_s for i in range(6))
        assert eng.stats()["link_bytes"]["instance0.host_out"] > 0  # it demoted through DRAM
        eng.check(final=True)
    assert ttft[1e9] > ttft[None] + 4 * 8.0 * 0.9  # four of the admissions waited on a drain
