"""Goodput against an SLO, and `replay-plan`'s search for the highest session rate meeting it.

The hand-checkable workload: single-call sessions of 1,000 new tokens and one output token on
the SIMPLE machine (tests/replaykit.py), one instance with one slot, the analytic engine. A
call is a prefill alone, 2 x (5e8 - 512) x 1000 + 2 x 256 + 4 x 1000^2 / 2 FLOPs at 1 TFLOP/s
= 1.000000976512 s, served one at a time: the instance completes mu = 1 / 1.000000976512
sessions/s. Below
mu the queue stays short; above it the queue, and TTFT with it, grows with time. With a median
TTFT limit of 40 s (40 calls' worth of queue) over the second half of 2,000 s of arrivals, the
highest rate meeting it is mu to within a few percent: the search must land there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from omegaconf import OmegaConf
from replaykit import SIMPLE, simple_prefill_s, start_cli, wait_for
from tracekit import row, write

from engines.specs import ConfigError
from replay.cost import SECONDS_PER_MONTH
from replay.goodput import Slo, goodput
from replay.plan import Search, bracket, candidate_cfg, prepare, probe, run_plan
from replay.report import build

N_TOKENS = 1000
SIMPLE_NO_PRICING = [o for o in SIMPLE if not o.startswith("pricing")]


@pytest.fixture(scope="module")
def single_calls(tmp_path_factory):
    """2,500 single-call sessions of 1,000 distinct tokens (no prefix shared), one output token."""
    path = tmp_path_factory.mktemp("pool") / "single.parquet"
    return write(path, [row(f"s{i:05d}", 0, N_TOKENS, [i * 100 + j + 1 for j in range(N_TOKENS // 64)],
                            output_tokens=1, arrival_s=float(i)) for i in range(2500)], block_size=64)


def hand_plan(path, ttft_s=40.0, duration_s=2000.0, precision=0.05, start=0.3, percentile=50):
    return OmegaConf.create({
        "workload": {"path": str(path)},
        "slo": {"ttft_s": ttft_s, "tpot_s": None, "percentile": percentile},
        "search": {"start_rate_per_s": start, "growth": 2.0, "precision": precision,
                   "min_rate_per_s": 0.05, "max_rate_per_s": 10.0, "duration_s": duration_s,
                   "warmup_fraction": 0.5},
        "base": SIMPLE_NO_PRICING,
        "grid": {"cache": ["hbm_only"]},
    })


def test_found_rate_is_the_roofline_capacity(single_calls, tmp_path):
    mu = 1.0 / simple_prefill_s(N_TOKENS)
    assert mu == pytest.approx(1 / 1.000000976512, rel=1e-12)
    plan = hand_plan(single_calls)
    per_byte_s = 1e-15  # HBM priced, bought with the instance: its 8.995e11 bytes paid as its GPU is
    price = 1e12 * SECONDS_PER_MONTH * per_byte_s
    plan.base = [*plan.base, f"pricing.self_hosted.storage_usd_per_tb_month.hbm={price!r}"]
    frame = run_plan(plan, tmp_path / "plan", progress=False)
    r = frame.row(0, named=True)
    assert r["status"] == "ok"
    assert r["max_sessions_per_s_per_instance"] == pytest.approx(mu, rel=0.05)
    assert r["max_sessions_per_s_per_gpu"] == r["max_sessions_per_s_per_instance"]  # tp = 1
    assert r["limited_by"] == "queueing"  # TTFT past the limit is time waiting for the one slot
    assert r["reuse"] == 0.0
    # provisioned cost at the rate: one GPU and its HBM for 1/rate seconds per session (power_w=0)
    gpu_hour = OmegaConf.load("conf/pricing/self_hosted.yaml").self_hosted.gpu_hour_usd
    per_s = gpu_hour / 3600 + (1e12 * 0.9 - 5e8) * per_byte_s
    assert r["usd_per_session"] == pytest.approx(per_s / r["max_sessions_per_s_per_instance"], rel=1e-9)
    assert r["usd_per_mtok"] == pytest.approx(r["usd_per_session"] / ((N_TOKENS + 1) / 1e6))
    for f in ("plan.parquet", "plan.csv", "plan.md", "pareto.png"):
        assert (tmp_path / "plan" / f).exists()
    # the figures come from runs kept on disk: the probe at the limit met the SLO, the next did not
    limit = json.loads((Path(r["limit_run"]) / "summary.json").read_text())
    assert limit["goodput"]["met"] and limit["goodput"]["ttft_at_percentile_s"] == r["ttft_at_limit_s"]
    assert not json.loads((Path(r["fail_run"]) / "summary.json").read_text())["goodput"]["met"]
    page = build([tmp_path / "plan"], tmp_path / "report")["html"].read_text()
    assert "Capacity plan" in page and page.count("data:image/png;base64,") == 1


def test_search_matches_a_sweep_of_rates(single_calls, tmp_path):
    """On a short case: the search's (pass, fail) bracket overlaps the boundary a grid of rates
    finds, and pass/fail is monotone along the grid (the probes share their random draws)."""
    p = prepare(hand_plan(single_calls, ttft_s=10.0, duration_s=300.0), tmp_path / "plan")
    cfg = candidate_cfg(p.base, p.candidates[0][1])
    runs = iter(range(100))
    test = lambda rate: probe(cfg, p.pool, p.search, rate, tmp_path / f"r{next(runs)}").met  # noqa: E731
    lo, hi = bracket(test, p.search)
    assert hi / lo <= 1.05
    grid = [0.6 * 1.1 ** j for j in range(12)]  # 0.6 .. 1.71
    passed = [test(rate) for rate in grid]
    assert passed[0] and not passed[-1]
    first_fail = passed.index(False)
    assert all(not x for x in passed[first_fail:])  # monotone
    g_pass, g_fail = grid[first_fail - 1], grid[first_fail]
    assert lo < g_fail and hi > g_pass


def test_a_ctrl_c_in_a_probe_stops_the_plan_not_judges_the_rate(single_calls, tmp_path):
    # One press once the first probe has begun. The probe keeps what finished, but a rate
    # judged on part of a probe would be wrong: the plan stops, says so and exits 130 (before,
    # it went on with the part, or ended on a bare "Aborted!").
    plan = tmp_path / "hand.yaml"
    OmegaConf.save(hand_plan(single_calls), plan)
    proc = start_cli("replay-plan", "--plan", str(plan), "--out", str(tmp_path / "out"), cwd=tmp_path)
    wait_for(lambda: list((tmp_path / "out").glob("c*/probe*/trace.parquet")), proc, time.monotonic() + 120)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: no plan written" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "plan.md").exists()


def test_looser_slo_never_gives_a_lower_rate(single_calls, tmp_path):
    rates = []
    for i, (ttft, pct) in enumerate([(5.0, 90), (5.0, 50), (40.0, 50)]):
        plan = hand_plan(single_calls, ttft_s=ttft, duration_s=200.0, precision=0.1, percentile=pct)
        r = run_plan(plan, tmp_path / f"p{i}", progress=False).row(0, named=True)
        rates.append(r["max_sessions_per_s_per_instance"])
    assert rates == sorted(rates)
    assert rates[-1] > rates[0]


def test_a_candidate_that_cannot_meet_the_slo_says_so(single_calls, tmp_path):
    """A call alone takes ~1 s: a 0.5 s TTFT limit fails at any rate."""
    frame = run_plan(hand_plan(single_calls, ttft_s=0.5, duration_s=100.0), tmp_path / "p", progress=False)
    r = frame.row(0, named=True)
    assert r["status"].startswith("cannot meet the SLO")
    assert r["usd_per_session"] is None
    assert r["probes"] == 3  # 0.3, 0.15, 0.075; 0.0375 is below min_rate_per_s


def test_more_hbm_or_an_extra_tier_never_gives_a_lower_rate(tmp_path):
    """Small coding-agent sessions on Llama-3.1-70B at tp=4 on H100 (HBM holds a handful of
    sessions): a quarter of the HBM, all of it, all of it plus host DRAM."""
    plan = OmegaConf.create({
        "workload": {"overrides": ["trace=coding_agent", "trace.human_prompts=[1,1]",
                                   "trace.calls_per_prompt.median=6", "trace.human_pause_s.median=60",
                                   "trace.subagent.probability=0"],
                     "pool_sessions": 80},
        "slo": {"ttft_s": 2.0, "tpot_s": 0.05, "percentile": 90},
        "search": {"start_rate_per_s": 0.1, "precision": 0.15, "min_rate_per_s": 0.01,
                   "max_rate_per_s": 2.0, "lifetimes": 1.5},
        "base": ["engine=analytic", "model=llama3_1_70b", "hardware=h100_sxm", "parallel.tp=4"],
        "candidates": [
            {"name": "quarter_hbm", "overrides": ["cache=hbm_only", "hardware.hbm_bytes=52e9"]},
            {"name": "hbm", "overrides": ["cache=hbm_only"]},
            {"name": "hbm_dram", "overrides": ["cache=hbm_dram"]},
        ],
    })
    frame = run_plan(plan, tmp_path / "p", progress=False)
    rate = {r["candidate"]: r["max_sessions_per_s_per_instance"] or 0.0 for r in frame.iter_rows(named=True)}
    assert rate["quarter_hbm"] <= rate["hbm"] <= rate["hbm_dram"]
    assert rate["hbm_dram"] > 0


def test_goodput_by_hand():
    """Four calls of two sessions; warm-up excludes the first; drain excludes the last."""
    df = pl.DataFrame({
        "session_id": ["a", "a", "b", "b"],
        "arrival_s": [0.0, 10.0, 20.0, 40.0],
        "finish_s": [1.0, 12.0, 23.0, 41.0],
        "ttft_s": [0.5, 1.5, 3.0, 0.2],
        "tpot_s": [0.01, None, 0.02, 0.09],
        "input_tokens": [100, 200, 300, 400],
        "output_tokens": [10, 1, 10, 10],
    })
    g = goodput(df, Slo(ttft_s=2.0, tpot_s=0.05, percentile=100))
    assert g["calls"] == 4 and g["window_s"] == [0.0, 41.0]
    assert g["calls_met_share"] == 0.5  # b's calls miss: TTFT 3 s, TPOT 90 ms
    assert g["sessions_met_share"] == 0.5
    assert g["met"] is False and g["failed_on"] == ["ttft", "tpot"]
    assert g["ttft_at_percentile_s"] == 3.0 and g["tpot_at_percentile_s"] == 0.09
    assert g["achieved_sessions_per_s"] == pytest.approx(2 / 41)
    assert g["tokens_per_s"] == pytest.approx(1031 / 41)
    # warm-up: the first half of the session starts (0 .. 20) -> calls sent from t=10;
    # without the drain -> until the last session started (t=20): calls a-1 and b-0
    g = goodput(df, Slo(ttft_s=4.0, tpot_s=0.05, percentile=50, warmup_fraction=0.5, exclude_drain=True))
    assert g["window_s"] == [10.0, 20.0] and g["calls"] == 2
    assert g["ttft_at_percentile_s"] == pytest.approx(2.25)  # median of 1.5 and 3.0
    assert g["met"] is True and g["calls_met_share"] == 1.0
    assert g["achieved_sessions_per_s"] == pytest.approx(1 / 10)  # b started in the window
    assert math.isclose(g["output_tokens_per_s"], 11 / 10)


@pytest.mark.parametrize("bad", [{"percentile": 0}, {"ttft_s": -1}, {"warmup_fraction": 1.0},
                                 {"tpot_s": "fast"}])
def test_bad_slo_is_one_line(bad):
    with pytest.raises(ConfigError, match="slo."):
        Slo.from_cfg({"ttft_s": 2.0, **bad})


@pytest.mark.parametrize("bad", [{"growth": 1.0}, {"precision": 0}, {"start_rate_per_s": 0},
                                 {"warmup": 0.1}])
def test_bad_search_is_one_line(bad):
    with pytest.raises(ConfigError, match="plan search"):
        Search.from_cfg(bad)


def test_a_misspelt_slo_key_is_one_line():
    with pytest.raises(ConfigError, match="slo: unknown key 'ttft' \\(known: ttft_s, tpot_s, "):
        Slo.from_cfg({"ttft": 2.0, "tpot_s": 0.05})  # before: no TTFT target, silently


@pytest.mark.parametrize("key, value, message", [
    ("candidate", [{"name": "a", "overrides": []}], "plan: unknown key 'candidate'"),
    ("workload.pool_session", 50, "plan workload: unknown key 'pool_session'"),
    ("candidates", [{"name": "a", "override": ["instances=2"]}], "plan candidate: unknown key 'override'"),
])
def test_a_misspelt_plan_key_is_one_line(single_calls, tmp_path, key, value, message):
    # a plan file is not checked by Hydra: each of these was ignored, and the search ran without it
    plan = hand_plan(single_calls)
    OmegaConf.update(plan, key, value, force_add=True)
    with pytest.raises(ConfigError, match=message):
        prepare(plan, tmp_path / "plan")


def test_a_pd_candidate_is_sized_by_both_pools(single_calls, tmp_path):
    """deployment=pd on SIMPLE: one prefill GPU limits the deployment at mu sessions/s (the
    decode GPU only moves and samples), over 2 GPUs; a session costs both GPUs for 1 / rate."""
    plan = hand_plan(single_calls)
    plan.base = [*[o for o in SIMPLE_NO_PRICING if not o.startswith("engine.")], "engine=offload",
                 "deployment=pd", "deployment.prefill.tp=1", "deployment.decode.tp=1",
                 "deployment.decode.gpu_hour_usd=1.0"]
    r = run_plan(plan, tmp_path / "plan", progress=False).row(0, named=True)
    mu = 1.0 / simple_prefill_s(N_TOKENS)
    assert r["gpus"] == 2 and r["instances"] == 1
    assert r["max_sessions_per_s_per_instance"] == pytest.approx(mu, rel=0.05)
    assert r["max_sessions_per_s_per_gpu"] == r["max_sessions_per_s_per_instance"] / 2
    hourly = 2.00 + 1.0  # prefill GPU at pricing.self_hosted's $2/h, decode GPU at $1/h; power 0
    assert r["usd_per_session"] == pytest.approx(hourly / 3600 / r["max_sessions_per_s_per_instance"],
                                                 rel=1e-9)


def test_a_plan_without_a_grid_has_only_its_listed_candidates():
    from replay.plan import candidates

    plan = OmegaConf.create({"candidates": [{"name": "a", "overrides": ["instances=2"]}]})
    assert candidates(plan) == [("a", ["instances=2"])]  # no extra empty candidate from the grid
