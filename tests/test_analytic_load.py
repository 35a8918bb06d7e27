"""The analytic engine under load, worked out by hand from the roofline: a prefill's chunk steps
stall the calls decoding beside it, and the GPU time booked to calls never exceeds what the
instance's GPUs were busy (Llama-3.1-70B, tp=8 on H100, chunks of 8,192 tokens)."""

import math

import numpy as np
import pytest
from test_causal import engine, request, run_until_done

CHUNK = 8192


def mixed_prefill_s(roof, new_tokens: int, batch: int, context: float) -> tuple[float, int]:
    """A prefill alone, plus, in each of its chunk steps, the decode of ``batch`` calls at mean
    ``context`` (a mixed step costs the sum of its phases)."""
    chunk = min(new_tokens, CHUNK)
    steps = math.ceil(new_tokens / chunk)
    extra = roof.step_s([(chunk, 0)], batch, context) - roof.step_s([(chunk, 0)])
    return roof.prefill_s(new_tokens) + steps * extra, steps


def test_a_long_prefill_stalls_a_call_decoding_beside_it():
    # x (1,024 tokens, 2,000 out) decodes alone at tpot; at t = 5 s y's 20,000-token prefill
    # starts: 3 mixed steps of ~0.5 s, each giving x one token. x's finish moves by y's prefill
    # time less the 3 tokens it still made: P_y - 3 tpot.
    eng = engine("engine=analytic", "cache=hbm_dram", "engine.check_invariants=true")
    roof = eng.roofline
    eng.submit(request("x", np.arange(1, 17), 1024, 2000), 0.0)
    assert eng.advance(5.0) == []
    eng.submit(request("y", np.arange(100, 413), 20_000, 1, t=5.0), 5.0)
    done = run_until_done(eng)
    x, y = done["x"], done["y"]
    p_x = roof.prefill_s(1024)
    tpot = roof.decode_step_s(1, 1024 + 2000 / 2)
    p_y, steps = mixed_prefill_s(roof, 20_000, 1, 1024 + 2000 / 2)
    assert steps == 3 and p_y > 3 * 0.3  # each mixed step carries an 8,192-token chunk
    assert y.first_token_s == pytest.approx(5.0 + p_y, rel=1e-12)
    assert x.first_token_s == pytest.approx(p_x, rel=1e-12)
    assert x.finish_s == pytest.approx(p_x + 1999 * tpot + p_y - 3 * tpot, rel=1e-12)
    # GPU time: y's prefill span is y's; x gets the instance's pure-decode time (batch 1)
    assert y.gpu_s == pytest.approx(8 * p_y, rel=1e-12)
    assert x.gpu_s == pytest.approx(8 * (p_x + (1999 - 3) * tpot), rel=1e-12)
    eng.check(final=True)


def test_a_call_ending_inside_a_prefill_ends_at_its_last_mixed_step():
    # x (3 tokens out) starts decoding when y's 3-step prefill starts: its 2 remaining tokens
    # come from y's first 2 mixed steps, at 2/3 of y's prefill.
    eng = engine("engine=analytic", "cache=hbm_dram")
    roof = eng.roofline
    eng.submit(request("x", np.arange(1, 17), 1024, 3), 0.0)
    eng.submit(request("y", np.arange(100, 413), 20_000, 1), 0.0)
    done = run_until_done(eng)
    p_x = roof.prefill_s(1024)
    p_y, steps = mixed_prefill_s(roof, 20_000, 1, 1024 + 3 / 2)
    assert done["y"].first_token_s == pytest.approx(p_x + p_y, rel=1e-12)
    assert done["x"].finish_s == pytest.approx(p_x + 2 * p_y / steps, rel=1e-12)


def test_gpu_time_booked_in_a_burst_is_the_instances_busy_time():
    # x starts decoding alone, then six calls prefill one after another and join its batch. x
    # used to be booked its whole decode at batch 1 (and its decode overlapped their prefills):
    # the calls' GPU-seconds summed to more than the 8 GPUs were busy. The instance is busy
    # without a gap from 0 (prefills back to back, then someone decodes until the last finish),
    # so what is booked must be exactly 8 x the last finish.
    eng = engine("engine=analytic", "cache=hbm_dram", "engine.concurrency=16")
    eng.submit(request("x", np.arange(1, 17), 1024, 3000), 0.0)
    for i in range(6):
        eng.submit(request(f"y{i}", np.arange(1000 * (i + 1), 1000 * (i + 1) + 79), 5000, 600 + 100 * i), 0.0)
    done = run_until_done(eng)
    booked = sum(c.gpu_s for c in done.values())
    last = max(c.finish_s for c in done.values())
    assert booked == pytest.approx(8 * last, rel=1e-9)
    # each call is booked its own prefill at least
    assert all(c.gpu_s > 8 * eng.roofline.prefill_s(1024) for c in done.values())
    eng.check(final=True)
