"""Money by hand: the provisioned self-hosted cost of a 2-call run, the simulated no-reuse
baseline (zero savings where nothing is shared; a full prefill where it is), and the provider
cache's rules (a write readable from its response's first token, entries per model, the
minimum on the cached prefix)."""

import json

import numpy as np
import polars as pl
import pytest
from replaykit import (
    SIMPLE,
    compose_cfg,
    run_cli,
    run_two_lone_calls,
    simple_decode_step_s,
    simple_prefill_s,
)
from tracekit import row, write

from replay.api_cache import ApiPricing, ModelPrices, ProviderPromptCache
from replay.app import build_engine, run
from replay.billing import Biller
from replay.cost import SECONDS_PER_MONTH, SelfHostedPricing
from replay.runner import ReplayOptions, prepare_calls
from replay.summary import table

prefill, decode_step = simple_prefill_s, simple_decode_step_s


def by_id(out):
    return {r["request_id"]: r for r in pl.read_parquet(out / "requests.parquet").iter_rows(named=True)}


def test_provisioned_cost_of_two_calls_by_hand(tmp_path):
    # Two lone calls, 12-token prompts and 2 output tokens, sent at 0 and 2 s (open mode) to 2
    # instances of 1 GPU. $3.60/GPU-hour = $0.001/GPU-s; 1 kW at PUE 1 and $3.60/kWh = $0.001 per
    # busy GPU-s of energy.
    s = run_two_lone_calls(tmp_path, ["hardware.power_w=1000", "pricing.self_hosted.gpu_hour_usd=3.6",
                                      "pricing.self_hosted.pue=1.0", "pricing.self_hosted.usd_per_kwh=3.6"])
    one_call = prefill(12) + decode_step(12 + 1)  # decode at context input + output / 2
    span = 2.0 + one_call  # first send (0) to last finish (y-0's)
    busy = 2 * one_call
    assert s["span_s"] == pytest.approx(span, rel=1e-12)
    assert s["gpu_s"] == pytest.approx(busy, rel=1e-9)
    assert s["provisioned_gpu_s"] == pytest.approx(2 * span, rel=1e-12)
    assert s["gpu_utilisation"] == pytest.approx(busy / (2 * span), rel=1e-9)
    provisioned = 2 * span * 0.001 + busy * 0.001
    assert s["self_hosted_provisioned_usd"] == pytest.approx(provisioned, rel=1e-9)
    assert s["self_hosted_busy_usd"] == pytest.approx(busy * 0.001 + busy * 0.001, rel=1e-9)
    assert s["self_hosted_provisioned_usd_per_session"] == pytest.approx(provisioned / 2, rel=1e-9)
    assert s["self_hosted_provisioned_usd_per_mtok"] == pytest.approx(provisioned / (28 / 1e6), rel=1e-9)
    # nothing is shared: the simulated baseline runs the same calls the same way
    assert s["no_reuse_self_hosted_provisioned_usd"] == pytest.approx(provisioned, rel=1e-9)
    text = table(s)
    assert "self-hosted $ / session (provisioned)" in text and "(busy GPU-s only)" in text


def run_with_priced_hbm(tmp_path, engine, billed_on):
    """The two lone calls with HBM priced so that a byte for one second costs $0.001, billed on
    ``billed_on``; returns the summary, the span, and the byte-seconds the calls' KV was held:
    each call's 3 prompt blocks (4 tokens x 4 bytes each: 16 bytes) enter HBM when its prefill
    ends and stay to the run's end (its 2 output tokens complete no block)."""
    price = 1e12 * SECONDS_PER_MONTH * 0.001
    s = run_two_lone_calls(tmp_path, ["pricing.self_hosted.gpu_hour_usd=3.6",
                                      f"pricing.self_hosted.storage_usd_per_tb_month.hbm={price!r}",
                                      f"+pricing.self_hosted.storage_billing.hbm={billed_on}"], engine)
    span = 2.0 + prefill(12) + decode_step(12 + 1)
    held_byte_s = 16 * 3 * (span - prefill(12)) + 16 * 3 * (span - 2.0 - prefill(12))  # x's, y's
    assert s["span_s"] == pytest.approx(span, rel=1e-9)
    assert s["storage_usd_by_tier"]["hbm"] == pytest.approx(held_byte_s * 0.001, rel=1e-9)
    return s, span, held_byte_s


@pytest.mark.parametrize("engine", ["analytic", "offload"])
def test_provisioned_cost_adds_the_kv_held_by_hand(tmp_path, engine):
    s, span, held_byte_s = run_with_priced_hbm(tmp_path, engine, "held")  # a store billed on use
    gpus = 2 * span * 0.001  # 2 instances x 1 GPU at $0.001/GPU-s (no power: SIMPLE's is 0 W)
    assert s["self_hosted_provisioned_usd"] == pytest.approx(gpus + held_byte_s * 0.001, rel=1e-9)


@pytest.mark.parametrize("engine", ["analytic", "offload"])
def test_provisioned_cost_pays_for_a_tier_bought_whole_by_hand(tmp_path, engine):
    # Billed on capacity, the provisioned cost pays for both instances' whole KV room for the
    # span, however little the calls held: SIMPLE's HBM less its 10% reserve and the 5e8 bytes
    # of weights, 8.995e11 bytes each. The busy cost still pays only for what they held; the
    # baseline, on the same deployment, pays for the same room over its own (here equal) span.
    s, span, held_byte_s = run_with_priced_hbm(tmp_path, engine, "capacity")
    capacity = 2 * (1e12 * 0.9 - 5e8)
    assert s["capacity_bytes_by_tier"]["hbm"] == pytest.approx(capacity, rel=1e-12)
    assert s["provisioned_storage_usd_by_tier"]["hbm"] == pytest.approx(capacity * span * 0.001, rel=1e-9)
    gpus = 2 * span * 0.001
    assert s["self_hosted_provisioned_usd"] == pytest.approx(gpus + capacity * span * 0.001, rel=1e-9)
    busy = 2 * (prefill(12) + decode_step(12 + 1)) * 0.001
    assert s["self_hosted_busy_usd"] == pytest.approx(busy + held_byte_s * 0.001, rel=1e-9)
    assert s["no_reuse_self_hosted_provisioned_usd"] == pytest.approx(s["self_hosted_provisioned_usd"],
                                                                       rel=1e-9)
    assert s["no_reuse_provisioned_storage_usd_by_tier"]["hbm"] == pytest.approx(
        capacity * s["no_reuse_span_s"] * 0.001, rel=1e-9)


def test_each_tier_is_paid_on_its_billing_basis_by_hand():
    pricing = SelfHostedPricing(2.0, 0.1, 1.0, {"hbm": 0.0, "dram": 60.0, "nvme": 2.5, "warehouse": 20.0},
                                {"nvme": "capacity", "warehouse": "held"})
    capacity = {"hbm": 7e11, "dram": 4e12, "nvme": None, "warehouse": 1e15}
    held = {"dram": 0.5, "nvme": 0.25, "warehouse": 3.0}
    got = pricing.provisioned_storage_cost(capacity, SECONDS_PER_MONTH / 2, held)
    # dram, not named: bought, 4 TB for half a month at $60/TB-month = $120 whatever it held;
    # nvme: unbounded, nothing to buy: what it held; warehouse, billed on use: what it held
    assert got == {"hbm": 0.0, "dram": pytest.approx(120.0, rel=1e-12), "nvme": 0.25, "warehouse": 3.0}
    # a tier billed on use that held nothing (or a merge that passes no held figures) is still listed
    assert pricing.provisioned_storage_cost({"warehouse": 1e15, "nvme": None}, 1.0, {}) == \
        {"warehouse": 0.0, "nvme": 0.0}


def test_a_shared_tier_is_bought_once_and_each_instance_its_own():
    eng = build_engine(compose_cfg(["engine=offload", "cache=warehouse", "instances=3"]), 16)
    capacity = eng.stats()["capacity_bytes_by_tier"]
    assert capacity["dram"] == 3 * 1e12 and capacity["warehouse"] == 1e15


def test_merged_shards_keep_their_kv_storage_and_the_tiers_bought(tmp_path):
    # two shards of one replay (1 instance, 1 TB of DRAM at $60/TB-month; HBM priced at $1/TB-month
    # on what it holds), merged: the KV held is the shards' sum, and the DRAM bought is paid once
    # over the merged span
    def cli(name, *args):
        done = run_cli(name, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    for k in (0, 1):
        cli("replay", "trace.sessions=4", "replay.shards=2", f"replay.shard={k}", "plots=false",
            "replay.baseline=off", "replay.progress=false", f"hydra.run.dir=shard{k}",
            "pricing.self_hosted.storage_usd_per_tb_month.hbm=1.0",
            "+pricing.self_hosted.storage_billing.hbm=held")
    cli("replay-merge", "shard0", "shard1", "--out", "merged")
    shards = [json.loads((tmp_path / f"shard{k}" / "summary.json").read_text()) for k in (0, 1)]
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    held = [s["storage_usd_by_tier"]["hbm"] for s in shards]
    assert min(held) > 0 and merged["storage_usd_by_tier"]["hbm"] == pytest.approx(sum(held), rel=1e-12)
    assert merged["provisioned_storage_usd_by_tier"]["hbm"] == pytest.approx(sum(held), rel=1e-12)
    assert merged["capacity_bytes_by_tier"]["dram"] == 1e12
    bought = 1e12 * merged["span_s"] / 1e12 / SECONDS_PER_MONTH * 60.0
    assert merged["provisioned_storage_usd_by_tier"]["dram"] == pytest.approx(bought, rel=1e-12)


def test_provisioned_gpus_are_instances_times_tp(tmp_path):
    s = run_two_lone_calls(tmp_path, ["pricing.self_hosted.gpu_hour_usd=3.6", "parallel.tp=2",
                                      "hardware.links.nvlink=1e12"], "offload")
    assert s["provisioned_gpu_s"] == pytest.approx(2 * 2 * s["span_s"], rel=1e-12)  # 2 instances x tp 2
    assert s["self_hosted_provisioned_usd"] == pytest.approx(4 * s["span_s"] * 0.001, rel=1e-9)


@pytest.mark.parametrize("engine", ["analytic", "offload"])
def test_unique_prompts_save_nothing(tmp_path, engine):
    """40 one-call sessions with prompts that share no block, sent faster than one slot serves
    them: both simulations queue alike, so every saving is zero."""
    rows = [row(f"s{i:02d}", 0, 4 * 40, list(range(1000 * i + 1, 1000 * i + 41)), output_tokens=20,
                arrival_s=0.05 * i) for i in range(40)]
    path = write(tmp_path / "t.parquet", rows)
    out = tmp_path / "run"
    out.mkdir()
    overrides = [*SIMPLE, "replay.mode=open", "trace=file", f"trace.path={path}"]
    if engine == "offload":
        overrides = [o for o in overrides if not o.startswith("engine.")] + ["engine=offload"]
    s = run(compose_cfg(overrides), out)
    df = pl.read_parquet(out / "requests.parquet")
    assert s["reuse"] == 0 and s["queue_s"]["p99"] > 0  # a real queue
    assert (df["ttft_s"] - df["no_reuse_ttft_s"]).abs().max() < 1e-9
    assert (df["gpu_s"] - df["no_reuse_gpu_s"]).abs().max() < 1e-12
    for key in ("gpu_s_saving", "self_hosted_busy_saving", "self_hosted_provisioned_saving"):
        assert abs(s[key]) < 1e-9, key
    assert s["no_reuse_ttft_s"] == pytest.approx(s["ttft_s"], rel=1e-9)


def test_baseline_ttft_is_a_full_prefill_and_off_leaves_it_out(tmp_path):
    # a-0 [1, 2] then, 100 s after it finished, a-1 keeps 3 blocks and adds one; b-0 [1, 7, 2] at 1 s.
    path = write(tmp_path / "t.parquet", [
        row("a", 0, 10, [1, 2], output_tokens=2, arrival_s=0.0),
        row("a", 1, 16, [3], parent="a-0", kept=3, arrival_s=100.0, think_s=100.0),
        row("b", 0, 13, [1, 7, 2], arrival_s=1.0),
    ])
    out = tmp_path / "sim"
    out.mkdir()
    price = 1e12 * SECONDS_PER_MONTH * 1e-15  # HBM bought at $1e-15 a byte-second
    s = run(compose_cfg([*SIMPLE, "trace=file", f"trace.path={path}", "pricing.self_hosted.gpu_hour_usd=3.6",
                         f"pricing.self_hosted.storage_usd_per_tb_month.hbm={price!r}"]), out)
    by = by_id(out)
    assert by["a-1"]["ttft_s"] == pytest.approx(prefill(4, 12), rel=1e-9)  # with reuse: the tail
    for rid, n in (("a-0", 10), ("a-1", 16), ("b-0", 13)):
        assert by[rid]["no_reuse_ttft_s"] == pytest.approx(prefill(n), rel=1e-9)
        assert by[rid]["no_reuse_prefilled_tokens"] == n
    # closed mode: the baseline's a-1 is sent 100 s after the baseline's own a-0 finished
    assert by["a-1"]["no_reuse_arrival_s"] == pytest.approx(prefill(10) + decode_step(11) + 100.0)
    assert s["no_reuse_prefilled_tokens"] == 39 and s["baseline"] == "simulate"
    # both pay for 1 GPU ($0.001/s) and SIMPLE's 8.995e11 bytes of HBM, each over its own span
    # (the baseline's a-1 prefills 16 tokens, not 4: its span is longer)
    per_s = 0.001 + (1e12 * 0.9 - 5e8) * 1e-15
    assert s["no_reuse_span_s"] > s["span_s"]
    assert s["self_hosted_provisioned_usd"] == pytest.approx(per_s * s["span_s"], rel=1e-9)
    assert s["no_reuse_self_hosted_provisioned_usd"] == pytest.approx(per_s * s["no_reuse_span_s"], rel=1e-9)

    off = tmp_path / "off"
    off.mkdir()
    s = run(compose_cfg([*SIMPLE, "trace=file", f"trace.path={path}", "replay.baseline=off"]), off)
    df = pl.read_parquet(off / "requests.parquet")
    assert df["no_reuse_ttft_s"].null_count() == df["no_reuse_cost_usd"].null_count() == 3
    assert s["baseline"] == "off" and s["self_hosted_provisioned_saving"] is None
    assert s["no_reuse_ttft_s"]["p50"] is None and s["gpu_s_saving"] is None
    assert s["api_usd"] > 0  # the API bill needs no baseline
    assert json.loads((off / "summary.json").read_text())["no_reuse_gpu_s"] is None
    assert "no reuse (off)" in table(s)
    for folder in (out, off):  # the engine's streamed rows and the temporary file are gone
        assert [p.name for p in folder.iterdir() if "parquet" in p.name] == ["requests.parquet"]


def biller(load_conf, pricing="anthropic_haiku_4_5", block_size=4, **api):
    cfg = load_conf("pricing", pricing)["api"]
    cfg.update(api)
    return Biller(ApiPricing.from_cfg(cfg), ModelPrices(load_conf("pricing", "models")["models"]), block_size)


def times(**calls):
    """request_id -> (sent, first token)."""
    return pl.DataFrame([(k.replace("_", "-"), a, f) for k, (a, f) in calls.items()],
                        schema=["request_id", "arrival_s", "first_token_s"], orient="row")


@pytest.mark.parametrize("b_sent,b_reads", [
    (0.010, 0),   # sent 10 ms after a-0, before a-0's first token (0.5 s): nothing to read yet
    (0.600, 12),  # sent after it: reads a-0's 12-token prompt
])
def test_fan_out_calls_do_not_read_each_other(tmp_path, load_conf, b_sent, b_reads):
    path = write(tmp_path / "t.parquet", [
        row("a", 0, 12, [1, 2, 3], output_tokens=4, arrival_s=0.0),
        row("b", 0, 12, [1, 2, 3], output_tokens=4, arrival_s=b_sent),
    ])
    calls = prepare_calls(str(path), ReplayOptions(mode="open"))
    bill = biller(load_conf, min_tokens=1).bill(calls, times(a_0=(0.0, 0.5), b_0=(b_sent, b_sent + 0.5)))
    by = {r["request_id"]: r for r in bill.iter_rows(named=True)}
    assert by["a-0"]["api_cached_tokens"] == 0
    assert by["b-0"]["api_cached_tokens"] == b_reads
    # Haiku 4.5 x 1e6: write 1.25, read 0.1, output 5
    assert by["b-0"]["api_cost_usd"] * 1e6 == pytest.approx(b_reads * 0.1 + (12 - b_reads) * 1.25 + 4 * 5)


def test_the_stream_bills_a_call_only_once_every_earlier_call_has_finished(tmp_path, load_conf):
    """The runner's order: a-0 sent at 0 s (first token 5 s, finishes last), b-0 at 1 s (first
    token 1.5 s), c-0 at 6 s and d-0 at 7 s, both sent before a-0 finishes. c-0's read waits
    for a-0's finish, which tells the stream a-0's prompt was written at 5 s: c-0 and d-0 read
    all 12 tokens; b-0, sent before that write, reads none. The bill equals the one made from
    the finished rows."""
    path = write(tmp_path / "t.parquet", [
        row(s, 0, 12, [1, 2, 3], output_tokens=4, arrival_s=t)
        for s, t in (("a", 0.0), ("b", 1.0), ("c", 6.0), ("d", 7.0))])
    calls = {c["request_id"]: c for c in prepare_calls(str(path), ReplayOptions(mode="open"))
             .drop("new_block_hashes").iter_rows(named=True)}
    blocks = np.array([1, 2, 3], dtype=np.uint64)
    first = {"a-0": 5.0, "b-0": 1.5, "c-0": 6.5, "d-0": 7.5}
    stream = biller(load_conf, min_tokens=1).stream()
    for event, rid in (("send", "a-0"), ("send", "b-0"), ("finish", "b-0"), ("send", "c-0"),
                       ("finish", "c-0"), ("send", "d-0"), ("finish", "a-0"), ("finish", "d-0")):
        call = calls[rid]
        if event == "send":
            stream.sent(call["row"], call["arrival_s"])
        else:
            stream.finished(call, call["row"], call["arrival_s"], first[rid], blocks)
    bill = stream.close()
    cached = dict(zip(bill["request_id"], bill["api_cached_tokens"], strict=True))
    assert cached == {"a-0": 0, "b-0": 0, "c-0": 12, "d-0": 12}
    offline = biller(load_conf, min_tokens=1).bill(
        prepare_calls(str(path), ReplayOptions(mode="open")),
        times(a_0=(0.0, 5.0), b_0=(1.0, 1.5), c_0=(6.0, 6.5), d_0=(7.0, 7.5)))
    assert offline.sort("request_id").equals(bill.sort("request_id"))


def test_fan_out_in_a_replay(tmp_path):
    """The same rule end to end: two 12-token prompts sent 10 ms apart; a-0's first token comes
    after its 12 ms prefill, so b-0 reads nothing; c-0, sent at 1 s, reads the prompt."""
    path = write(tmp_path / "t.parquet", [
        row("a", 0, 12, [1, 2, 3], arrival_s=0.0),
        row("b", 0, 12, [1, 2, 3], arrival_s=0.010),
        row("c", 0, 12, [1, 2, 3], arrival_s=1.0),
    ])
    out = tmp_path / "run"
    out.mkdir()
    run(compose_cfg([*SIMPLE, "replay.mode=open", "trace=file", f"trace.path={path}"]), out)
    by = by_id(out)
    assert by["a-0"]["first_token_s"] == pytest.approx(prefill(12), rel=1e-9) and prefill(12) > 0.010
    assert [by[k]["api_cached_tokens"] for k in ("a-0", "b-0", "c-0")] == [0, 0, 12]


def test_entries_are_per_model(tmp_path, load_conf):
    """A Haiku entry is not read by an Opus call; a later Haiku call reads it at Haiku's price.
    Prompts of 4,160 tokens (65 blocks of 64): above both models' 4,096 minimum."""
    blocks = list(range(1, 66))
    haiku, opus = "claude-haiku-4-5-20251001", "claude-opus-4-6"
    path = write(tmp_path / "t.parquet", [
        row("h", 0, 4160, blocks, arrival_s=0.0, model=haiku),
        row("o", 0, 4160, blocks, arrival_s=1.0, model=opus),
        row("k", 0, 4160, blocks, arrival_s=2.0, model=haiku),
    ], block_size=64)
    calls = prepare_calls(str(path), ReplayOptions(mode="open"))
    sent = times(h_0=(0.0, 0.1), o_0=(1.0, 1.1), k_0=(2.0, 2.1))
    bill = biller(load_conf, "anthropic_opus_4_5", 64).bill(calls, sent)
    by = {r["request_id"]: r for r in bill.iter_rows(named=True)}
    assert [by[k]["api_cached_tokens"] for k in ("h-0", "o-0", "k-0")] == [0, 0, 4160]
    assert by["o-0"]["api_cost_usd"] * 1e6 == pytest.approx(4160 * 6.25)  # Opus 4.6 5-min write
    assert by["k-0"]["api_cost_usd"] * 1e6 == pytest.approx(4160 * 0.10)  # Haiku 4.5 read


def test_a_short_prompt_of_a_model_with_a_high_minimum_is_not_cached(tmp_path, load_conf):
    """2,048 tokens: cacheable on Sonnet 4 (1,024), not on Haiku 4.5 (4,096), whatever the
    configured model's minimum."""
    blocks = list(range(1, 33))
    path = write(tmp_path / "t.parquet", [
        row(s, 0, 2048, blocks, arrival_s=t, model=m) for s, t, m in
        (("a", 0.0, "claude-sonnet-4-20250514"), ("b", 1.0, "claude-sonnet-4-20250514"),
         ("c", 2.0, "claude-haiku-4-5"), ("d", 3.0, "claude-haiku-4-5"))
    ], block_size=64)
    calls = prepare_calls(str(path), ReplayOptions(mode="open"))
    sent = times(a_0=(0, 0.1), b_0=(1, 1.1), c_0=(2, 2.1), d_0=(3, 3.1))
    bill = biller(load_conf, "anthropic_opus_4_5", 64, min_tokens=1).bill(calls, sent)
    cached = dict(zip(bill["request_id"], bill["api_cached_tokens"], strict=True))
    written = dict(zip(bill["request_id"], bill["api_cache_write_tokens"], strict=True))
    assert cached == {"a-0": 0, "b-0": 2048, "c-0": 0, "d-0": 0}
    assert written == {"a-0": 2048, "b-0": 0, "c-0": 0, "d-0": 0}


@pytest.mark.parametrize(("shared_blocks", "read"), [(15, 0), (16, 1024), (17, 1024), (18, 1152)])
def test_openai_reads_1024_plus_128_k_tokens_of_the_shared_prefix_or_nothing(load_conf, shared_blocks, read):
    """Two 2,560-token prompts share their first 15, 16, 17 or 18 blocks of 64 tokens: 960 is
    under the floor; 1,024 reads 1,024; 1,088 rounds down to 1,024; 1,152 is 1,024 + 128."""
    cache = ProviderPromptCache(ApiPricing.from_cfg(load_conf("pricing", "openai_gpt_5")["api"]), 64)
    first = np.arange(1, 41, dtype=np.uint64)  # 40 blocks
    cache.call(first, 0.0, 2560, 0)
    second = np.concatenate([first[:shared_blocks], np.arange(1001, 1041 - shared_blocks, dtype=np.uint64)])
    assert cache.call(second, 1.0, 2560, 0).cached_tokens == read


def test_openai_floor_applies_to_the_cached_prefix(load_conf):
    """An earlier 1,280-token prompt shares its first 640 tokens with a 2,560-token one: 640 is
    a multiple of 128 but under the 1,024 floor, so nothing is read; a full match reads 1,280."""
    cache = ProviderPromptCache(ApiPricing.from_cfg(load_conf("pricing", "openai_gpt_5")["api"]), 64)
    first = np.arange(1, 21, dtype=np.uint64)  # 20 blocks = 1,280 tokens
    cache.call(first, 0.0, 1280, 0)
    diverging = np.concatenate([first[:10], np.arange(101, 131, dtype=np.uint64)])  # 40 blocks
    assert cache.call(diverging, 1.0, 2560, 0).cached_tokens == 0
    longer = np.concatenate([first, np.arange(201, 221, dtype=np.uint64)])
    assert cache.call(longer, 2.0, 2560, 0).cached_tokens == 1280
