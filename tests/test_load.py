"""The run table under load, by hand: served throughput, end-to-end latency, the saturation
rule, $ per session p50/p90, bootstrap intervals over sessions, the reported bill beside the
simulated one, and the HTML report's human column names and numbers."""

import numpy as np
import polars as pl
import pytest

from engines.specs import ConfigError
from replay.load import LoadOptions, bootstrap, load_figures, saturation, served_throughput
from replay.report import human_column, human_value
from replay.summary import table
from replay.sweep import markdown


def requests(rows):
    """A requests frame with the columns replay.load reads; ``rows``: dicts overriding zeros."""
    base = {"request_id": "", "session_id": "s", "arrival_s": 0.0, "finish_s": 0.0, "queue_s": 0.0,
            "no_reuse_arrival_s": 0.0, "no_reuse_finish_s": 0.0, "input_tokens": 0, "output_tokens": 0,
            "reused_tokens": 0, "api_cost_usd": 0.0, "api_no_reuse_cost_usd": 0.0, "cost_usd": 0.0,
            "no_reuse_cost_usd": 0.0}
    return pl.DataFrame([{**base, "request_id": f"r{i}", **r} for i, r in enumerate(rows)])


def test_served_throughput_and_end_to_end_by_hand():
    # sent at 0 and 1 s, finished at 4 and 5 s: a span of 5 s. The baseline finished at 9 and 10.
    df = requests([
        {"arrival_s": 0.0, "finish_s": 4.0, "input_tokens": 100, "output_tokens": 10,
         "no_reuse_arrival_s": 0.0, "no_reuse_finish_s": 9.0},
        {"arrival_s": 1.0, "finish_s": 5.0, "input_tokens": 200, "output_tokens": 20,
         "no_reuse_arrival_s": 1.0, "no_reuse_finish_s": 10.0},
    ])
    assert served_throughput(df) == {"calls_per_s": 2 / 5, "output_tokens_per_s": 30 / 5,
                                     "total_tokens_per_s": 330 / 5}
    assert served_throughput(df, "no_reuse_")["output_tokens_per_s"] == pytest.approx(30 / 10)
    figures = load_figures(df, LoadOptions(), np.random.default_rng(0))
    assert figures["served_total_tokens_per_s"] == pytest.approx(66.0)
    # end-to-end 4 and 4 s with reuse, 9 and 9 s without
    assert figures["e2e_s"]["p50"] == pytest.approx(4.0) and figures["no_reuse_e2e_s"]["p99"] == 9.0


def test_saturation_rule_by_hand():
    opts = LoadOptions(fraction=0.2, ratio=2.0, min_queue_s=1.0)
    # 10 calls in send order; the first fifth (2 calls) waited 0 and 0.2 s, the last fifth 5 and 7 s
    growing = requests([{"arrival_s": float(i), "queue_s": q}
                        for i, q in enumerate([0, 0.2, 1, 1, 2, 2, 3, 4, 5, 7])])
    sat = saturation(growing, opts)
    assert sat == {"first_queue_s": 0.1, "last_queue_s": 6.0, "saturated": True}
    # a steady queue of 3 s: the last fifth (3 s) is not over 2 x the first (6 s)
    steady = requests([{"arrival_s": float(i), "queue_s": 3.0} for i in range(10)])
    assert saturation(steady, opts)["saturated"] is False
    # growth of milliseconds is no backlog: 0.001 -> 0.5 s is under min_queue_s
    small = requests([{"arrival_s": float(i), "queue_s": q} for i, q in enumerate([0.001] * 5 + [0.5] * 5)])
    assert saturation(small, opts)["saturated"] is False
    # the rows are taken in send order, not file order
    assert saturation(growing.reverse(), opts)["saturated"] is True
    summary = {"calls": 10, "sessions": 1, "reuse": 0.0, "reuse_by_tier": {},
               "ttft_s": {"p50": 1.0, "p90": 1.0, "p99": 1.0},
               "no_reuse_ttft_s": {"p50": None, "p90": None, "p99": None},
               "tpot_s": {"p50": None, "p99": None}, "no_reuse_tpot_s": {"p50": None, "p99": None},
               "gpus": 1, "saturation": {**sat, "fraction": 0.2}}
    assert "WARNING: saturated: the median queue time grew from 0.10 s (first 20% of calls) to 6.00 s" \
        in table(summary)


def test_dollars_per_session_spread_by_hand():
    # three sessions whose calls' API bills sum to $1, $2 and $4: p50 = 2, p90 = 2 + 0.8 x (4 - 2)
    df = requests([{"session_id": "a", "api_cost_usd": 1.0, "cost_usd": 0.5},
                   {"session_id": "b", "api_cost_usd": 0.5}, {"session_id": "b", "api_cost_usd": 1.5},
                   {"session_id": "c", "api_cost_usd": 4.0}])
    figures = load_figures(df, LoadOptions(resamples=10), np.random.default_rng(0))
    assert figures["api_usd_per_session_dist"] == {"p50": 2.0, "p90": pytest.approx(3.6)}
    assert figures["self_hosted_busy_usd_per_session_dist"] == {"p50": 0.0, "p90": pytest.approx(0.4)}


def test_bootstrap_intervals_over_sessions_by_hand():
    # session A: 100 tokens, none reused, $1; session B: 100 tokens, all reused, $3. A resample of two
    # sessions is AA (reuse 0, $1), AB or BA (0.5, $2) or BB (1, $3) with chances 1/4, 1/2, 1/4.
    per_session = pl.DataFrame({"input": [100.0, 100.0], "reused": [0.0, 100.0], "api": [1.0, 3.0],
                                "busy": [0.0, 0.0]})
    wide = bootstrap(per_session, LoadOptions(resamples=2000, level=0.95), np.random.default_rng(1))
    # the 2.5% and 97.5% quantiles fall inside the AA and BB masses (25% each)
    assert wide["reuse"] == [0.0, 1.0] and wide["api_usd_per_session"] == [1.0, 3.0]
    # a 40% interval (30% to 70%) lies inside the AB/BA mass (25% to 75%)
    narrow = bootstrap(per_session, LoadOptions(resamples=2000, level=0.4), np.random.default_rng(1))
    assert narrow["reuse"] == [0.5, 0.5] and narrow["api_usd_per_session"] == [2.0, 2.0]
    # one session: every resample is that session
    one = bootstrap(per_session.head(1), LoadOptions(resamples=50), np.random.default_rng(2))
    assert one["reuse"] == [0.0, 0.0] and one["api_usd_per_session"] == [1.0, 1.0]
    # the draws come from the Generator passed in: same seed, same interval
    mixed = per_session.with_columns(reused=pl.Series([30.0, 80.0]))
    draw = lambda seed: bootstrap(mixed, LoadOptions(resamples=100), np.random.default_rng(seed))  # noqa: E731
    assert draw(5) == draw(5)


@pytest.mark.parametrize("cfg,key", [
    ({"saturation": {"fraction": 0}}, "load.saturation.fraction"),
    ({"saturation": {"ratio": 0.5}}, "load.saturation.ratio"),
    ({"bootstrap": {"resamples": 0}}, "load.bootstrap.resamples"),
    ({"bootstrap": {"level": 1.0}}, "load.bootstrap.level"),
])
def test_load_options_out_of_range_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key):
        LoadOptions.from_cfg(cfg)


def test_reported_bill_is_in_the_table():
    summary = {"calls": 2, "sessions": 1, "reuse": 0.5, "reuse_by_tier": {},
               "ttft_s": {"p50": 1.0, "p90": 1.0, "p99": 1.0},
               "no_reuse_ttft_s": {"p50": None, "p90": None, "p99": None},
               "tpot_s": {"p50": None, "p99": None}, "no_reuse_tpot_s": {"p50": None, "p99": None},
               "gpus": 1, "reported_api_usd": 12.5, "simulated_api_usd_where_reported": 11.25,
               "reported_cached_tokens": 4000, "simulated_cached_tokens_where_reported": 3500}
    text = table(summary).splitlines()
    simulated = next(line for line in text if line.startswith("API bill of calls with recorded usage"))
    assert simulated.split()[-1] == "$11.25"
    assert next(line for line in text if "as recorded" in line).split()[-1] == "$12.50"
    assert "3,500 / 4,000" in next(line for line in text if "cache-read tokens" in line)


def test_report_columns_are_human_with_units():
    assert human_column("ttft_p99_s") == ("TTFT p99", "s")
    assert human_column("reuse_dram") == ("reuse from dram", "%")
    assert human_value(17440.25, "") == "17,440.2"  # not 1.744e+04
    assert human_value(0.0283, "s") == "28.3 ms" and human_value(5834.0, "s") == "5,834.00 s"
    assert human_value(0.9854, "%") == "98.5%" and human_value(4.6234, "$") == "$4.62"
    assert human_value(None, "$") == "" and human_value(True, "text") == "yes"
    # the sweep's comparison.md: no exponent either
    assert markdown(pl.DataFrame({"gpu_s": [17440.25], "reuse": [0.98551]})).splitlines()[-1] \
        == "| 17,440 | 0.9855 |"


def test_a_run_reports_the_load_figures_by_hand(tmp_path):
    # two lone calls (replaykit.run_two_lone_calls): each takes one prefill and one decode step
    from replaykit import run_two_lone_calls, simple_decode_step_s, simple_prefill_s

    s = run_two_lone_calls(tmp_path, ["plots=false"])
    one_call = simple_prefill_s(12) + simple_decode_step_s(12 + 1)
    span = 2.0 + one_call
    assert s["e2e_s"]["p50"] == pytest.approx(one_call, rel=1e-9)
    assert s["served_output_tokens_per_s"] == pytest.approx(4 / span, rel=1e-9)
    assert s["served_total_tokens_per_s"] == pytest.approx(28 / span, rel=1e-9)
    assert s["queue_s"]["p99"] == 0.0 and s["saturation"]["saturated"] is False
    assert s["ci"]["resamples"] == 1000 and s["ci"]["reuse"] == [0.0, 0.0]  # nothing shared
    assert "served output tokens/s (over the span)" in table(s)
