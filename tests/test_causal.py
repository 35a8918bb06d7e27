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


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_preempted_100k_call_prefills_its_whole_prompt(mode):
    # Preempted right after its first 8,192-token chunk. It used to find its whole prompt
    # "cached" on readmission (stored at admission, before any chunk computed it) and finish
    # after ~8.2k tokens of prefill with TTFT 0.27 s. Now it keeps only the 128 blocks it
    # computed (recompute) or wrote out (swap), and computes the rest.
    eng = engine("engine=offload", "cache=hbm_dram", f"engine.preemption={mode}",
                 "engine.check_invariants=true")
    blocks = np.arange(1, 1563)  # 100,000 tokens: 1,562 full blocks
    eng.submit(request("big", blocks, 100_000), 0.0)
    inst = eng.instances[0]
    first_step_end = inst.step.end_s
    eng.advance(first_step_end)
    (seq,) = inst.running
    assert seq.context == 8192 and seq.acquired.committed == 128
    inst.step = None  # the next step was planned: preempt before it runs
    eng._preempt(inst, seq, first_step_end)
    eng._plan(inst, first_step_end)
    done = run_until_done(eng)["big"]
    assert done.prefilled_tokens >= 100_000  # nothing was cached before it was admitted
    assert done.first_token_s >= eng.roofline.prefill_s(100_000) * (1 - 1e-9)
    assert done.preemptions == 1
    eng.check(final=True)


def test_a_block_evicted_while_preempted_is_recomputed_and_counted():
    # HBM of 200 blocks; the preempted call's 128 computed blocks are evicted by another call
    # (hbm_only: nowhere to go) before it returns, so it computes them again: of its 128
    # computed blocks, those not kept are recomputed.
    hbm = 200 * BS * 327_680
    eng = engine("engine=offload", "cache=hbm_only", f"cache.tiers.0.capacity_bytes={hbm}",
                 "engine.check_invariants=true")
    eng.submit(request("a", np.arange(1, 181), 180 * BS), 0.0)
    inst = eng.instances[0]
    t = inst.step.end_s
    eng.advance(t)
    (seq,) = inst.running
    assert seq.acquired.committed == 128
    inst.step = None
    eng._preempt(inst, seq, t)
    inst.waiting.popleft()  # hold it back while another call takes all of HBM
    eng._plan(inst, t)
    eng.submit(request("b", np.arange(1000, 1190), 190 * BS), t)
    run_until_done(eng)
    kept = inst.cache.lookup(np.arange(1, 181))[0]
    assert kept < 128  # b evicted most of them
    inst.waiting.append(seq)
    eng._plan(inst, eng.clock)  # b's blocks go to make room; what it kept is in use, not evicted
    done = run_until_done(eng)["a"]
    assert done.recomputed_tokens == (128 - kept) * BS
    assert done.prefilled_tokens == 128 * BS + (180 - kept) * BS
    eng.check(final=True)


def test_a_call_waits_for_a_prefetch_still_in_flight():
    # a's 1,562 blocks go down to DRAM; its child is prefetched 1 ms before it is sent, while
    # the 4 GB transfer takes ~75 ms: the child's TTFT covers the rest of the transfer and its
    # own prefill (it was 54 ms with load_s = 0 when a transfer counted as landed at its start).
    hbm = 2000 * BS * 327_680
    eng = engine("engine=offload", "cache=hbm_dram", f"cache.tiers.0.capacity_bytes={hbm}",
                 "engine.prefetch=true", "engine.prefetch_lead_s=0.001", "engine.check_invariants=true")
    a = request("a", np.arange(1, 1563), 100_000)
    eng.submit(a, 0.0)
    run_until_done(eng)
    eng.submit(request("b", np.arange(10_000, 11_500), 96_000, t=100.0), 100.0)
    run_until_done(eng)
    cache = eng.instances[0].cache
    assert cache.lookup(a.blocks)[1] > 0  # part of a now sits in DRAM
    eng.expect(a, 300.0)
    eng.advance(299.9995)
    assert eng.prefetched_blocks > 0  # the prefetch began at 299.999
    child = request("a-1", np.concatenate([a.blocks, [99_001, 99_002]]), 100_000 + 2 * BS + 10, t=300.0,
                    session="a")
    eng.submit(child, 300.0)
    done = run_until_done(eng)["a-1"]
    dram = eng.tiers[1]
    transfer = eng.roofline.load_s(dram, eng.prefetched_blocks * BS * KV_GPU_TOKEN)
    prefill = eng.roofline.prefill_s(2 * BS + 10, 1562 * BS)
    assert done.first_token_s - 300.0 >= (transfer - 0.001) + prefill - 1e-9
    # it waited for the transfer, queued (HBM drains what the prefetch displaced) or loading
    assert (done.start_s - 300.0) + done.load_s >= transfer - 0.001 - 1e-9
    eng.check(final=True)


def test_sixteen_simultaneous_prompts_share_the_instance_on_both_simulators():
    # 16 distinct 26k-token prompts sent together: the analytic engine used to run them all at
    # full speed at once (every TTFT 0.96 s). Prefills share the GPUs: the last TTFT is about
    # 16 prefills.
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
    # ~8 s at 1 GB/s, ~0.15 s over PCIe, against a 1.7 s prefill.
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
