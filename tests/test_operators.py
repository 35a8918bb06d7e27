"""Each operator's FLOPs and bytes against figures worked out by hand from config.json shapes;
collectives, MoE expert counts, precision and the mixed step by hand."""

import math

import numpy as np
import pytest
from conftest import conf
from replaykit import SIMPLE, SIMPLE_FLOPS, SIMPLE_HEAD, compose_cfg

from engines.base import Request
from engines.offload import OffloadEngine
from engines.roofline import Roofline
from engines.specs import ConfigError, HardwareSpec, ModelSpec, hbm_kv_capacity_bytes
from replay.app import build_engine
from traces.hashing import chain_hashes, output_blocks_after


def model(name, **changes):
    return ModelSpec.from_cfg({**conf("model", name), **changes})


def hardware(name, **changes):
    cfg = conf("hardware", name)
    cfg.update(changes)
    return HardwareSpec.from_cfg(cfg)


def ops(roof, *args):
    return {o.name: o for o in roof.operators(*args)}


# Llama-3.1-8B (config.json): hidden 4096, 32 layers, 32 heads, 8 KV heads, head 128, MLP 14336,
# vocab 128256.
L8_PROJ = 4096 * 4096 * 2 + 2 * 4096 * 1024  # q, o + k, v = 41,943,040 per layer
L8_MLP = 3 * 4096 * 14336  # 176,160,768 per layer
L8_HEAD = 128256 * 4096
L8_RESIDUAL = 8.03e9 - (32 * (L8_PROJ + L8_MLP) + 2 * L8_HEAD)  # norms: 8.03e9 is the config's round


def test_llama8b_operators_by_hand():
    m = model("llama3_1_8b")
    assert m.attention_params == L8_PROJ == 41_943_040
    assert m.residual_params == pytest.approx(L8_RESIDUAL) and 0 < L8_RESIDUAL < 1e5
    roof = Roofline(m, hardware("h100_sxm"), 1)
    n, c, b, ctx = 1000, 3000, 16, 2000
    got = ops(roof, [(n, c)], b, ctx)
    t = n + b
    assert got["qkv_o"].flops == pytest.approx(2 * 32 * L8_PROJ * t)
    assert got["qkv_o"].bytes == pytest.approx(32 * L8_PROJ * 2)  # bf16 weights read once
    assert got["mlp"].flops == pytest.approx(2 * (32 * L8_MLP + L8_RESIDUAL) * t)
    assert got["mlp"].bytes == pytest.approx((32 * L8_MLP + L8_RESIDUAL) * 2)
    assert got["lm_head"].flops == pytest.approx(2 * L8_HEAD * (1 + b))  # sampled positions only
    pair = 2 * 32 * 32 * (128 + 128)  # QK^T and AV, every layer
    assert got["prefill_attention"].flops == pytest.approx(pair * (n * c + n * n / 2))
    assert got["prefill_attention"].bytes == pytest.approx((c + n) * 131_072)
    assert got["decode_attention"].flops == pytest.approx(pair * b * ctx)
    assert got["decode_attention"].bytes == pytest.approx(b * ctx * 131_072)
    assert "collectives" not in got and "experts" not in got


# DeepSeek-V3 (config.json): hidden 7168, 61 layers (3 dense, MLP 18432), 128 heads, q_lora 1536,
# kv_lora 512, qk nope 128 + rope 64, v 128, 256 routed experts (2048 wide) top-8 + 1 shared.
DS_PROJ = (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168)
DS_EXPERT = 3 * 7168 * 2048
DS_MLP = 3 * 3 * 7168 * 18432 + 58 * (DS_EXPERT + 7168 * 256)  # dense layers, shared experts, routers


def test_deepseek_v3_operators_by_hand():
    m = model("deepseek_v3")
    assert m.attention_params == DS_PROJ == 187_105_280
    assert m.expert_params == DS_EXPERT and m.mlp_params == DS_MLP
    assert m.shape_params == pytest.approx(671e9, rel=1e-3)  # the shapes add up to the 671B
    assert m.active_weight_bytes == pytest.approx(37e9, rel=0.02)  # and to ~37B active (fp8)
    tp, b, ctx = 8, 64, 4000
    roof = Roofline(m, hardware("h200"), tp)
    got = ops(roof, [], b, ctx)
    assert got["qkv_o"].flops == pytest.approx(2 * 61 * DS_PROJ * b / tp)
    assert got["qkv_o"].bytes == pytest.approx(61 * DS_PROJ * 1 / tp)  # fp8 weights
    distinct = 256 * (1 - (1 - 8 / 256) ** b)
    assert got["experts"].flops == pytest.approx(2 * 58 * 8 * DS_EXPERT * b / tp)
    assert got["experts"].bytes == pytest.approx(58 * distinct * DS_EXPERT / tp)
    # absorbed MLA decode: QK over latent + rope (512 + 64), AV over the latent (512), every head
    assert got["decode_attention"].flops == pytest.approx(2 * 61 * 128 * (576 + 512) * b * ctx / tp)
    # every rank reads the whole latent: 61 x 576 x 2 B per token, not split by tp
    assert got["decode_attention"].bytes == pytest.approx(b * ctx * 61 * 576 * 2)
    # prefill runs MLA as multi-head attention (QK 192, V 128) and up-projects the cached latent
    n, c = 2000, 1000
    pre = ops(roof, [(n, c)])["prefill_attention"]
    assert pre.flops == pytest.approx((2 * 61 * 128 * (192 + 128) * (n * c + n * n / 2)
                                       + 2 * 61 * 512 * 128 * 256 * c) / tp)
    # data-parallel attention: each GPU reads only its own sequences' latent
    dp = Roofline(model("deepseek_v3", dp_attention=True), hardware("h200"), tp)
    assert ops(dp, [], b, ctx)["decode_attention"].bytes == pytest.approx(b * ctx * 61 * 576 * 2 / tp)


@pytest.mark.parametrize("tokens,expected", [
    (1, 8.0),  # one token: exactly its top-8
    (64, 256 * (1 - (248 / 256) ** 64)),  # 256 (1 - e^(64 ln 0.96875)) = ~222.4
    (4096, 256.0),  # everything (1 - 8/256)^4096 ~ 1e-57
])
def test_distinct_experts_by_the_formula(tokens, expected):
    got = model("deepseek_v3").distinct_experts(tokens)
    assert got == pytest.approx(expected, rel=1e-12)
    if tokens == 64:
        assert 222 < got < 223


def test_one_all_reduce_by_hand():
    m, hw = model("llama3_1_70b"), hardware("h100_sxm")
    roof = Roofline(m, hw, 8)
    b = 64
    bytes_ = b * 8192 * 2  # bf16 activations of 64 tokens
    one = hw.collective_latency_s + 2 * 7 / 8 * bytes_ / (450e9 * hw.collective_efficiency)
    assert ops(roof, [], b, 1000)["collectives"].seconds == pytest.approx(2 * 80 * one)
    assert "collectives" not in ops(Roofline(m, hw, 1), [], b, 1000)


def test_eight_gpu_prefill_is_slower_than_an_eighth_of_one():
    m, hw = model("llama3_1_70b"), hardware("h100_sxm")
    for n in (2_000, 32_000):
        one, eight = Roofline(m, hw, 1).prefill_s(n), Roofline(m, hw, 8).prefill_s(n)
        assert one / 8 < eight < one / 4


def test_fp8_halves_kv_bytes_and_doubles_the_peak():
    bf16, fp8 = model("llama3_1_70b"), model("llama3_1_70b", weight_dtype="fp8", kv_dtype="fp8")
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token / 2 == 163_840
    assert fp8.weight_bytes == bf16.weight_bytes / 2
    hw = hardware("h100_sxm")
    assert Roofline(fp8, hw, 2).dense_per_s == pytest.approx(2 * Roofline(bf16, hw, 2).dense_per_s, rel=1e-3)
    # A100 has no FP8 tensor cores: fp8 weights run at the bf16 peak
    a100 = hardware("a100_sxm_80g")
    assert Roofline(fp8, a100, 2).dense_per_s == Roofline(bf16, a100, 2).dense_per_s
    # the older byte keys still decide when set
    assert model("llama3_1_70b", kv_dtype_bytes=1).kv_dtype == "fp8"
    with pytest.raises(ConfigError, match="kv_dtype must be one of"):
        model("llama3_1_70b", kv_dtype="int3")


def test_70b_fp8_fits_one_h200_and_bf16_does_not():
    hw = hardware("h200")
    kv = hbm_kv_capacity_bytes(model("llama3_1_70b", weight_dtype="fp8"), hw, 1, 0.1)
    assert kv == pytest.approx(150_754_820_096 * 0.9 - 70.6e9)
    with pytest.raises(ConfigError, match="does not fit"):
        hbm_kv_capacity_bytes(model("llama3_1_70b"), hw, 1, 0.1)


def test_a_mixed_step_costs_the_sum_of_its_operators():
    m, hw = model("llama3_1_70b"), hardware("h100_sxm")
    roof = Roofline(m, hw, 8)
    chunks, b, ctx = [(8192, 0)], 256, 50_000
    step = roof.step_s(chunks, b, ctx)
    assert step == pytest.approx(hw.overhead_s + sum(o.seconds for o in roof.operators(chunks, b, ctx)))
    # the decode KV reads are their own operator, by hand: 256 x 50k tokens x 40,960 B per GPU
    kv_read = b * ctx * 327_680 / 8 / (3.35e12 * hw.hbm_efficiency)
    assert ops(roof, chunks, b, ctx)["decode_attention"].seconds == pytest.approx(kv_read)
    # so they never hide under the prefill GEMMs: the step costs at least the prefill plus them
    assert step > roof.prefill_s(8192) + kv_read - hw.overhead_s


def test_a_mixed_step_by_hand_is_each_operator_at_its_own_roofline():
    # SIMPLE with 4-byte KV (8 bytes a token: decode attention reads 8 bytes per 4 FLOPs, so it
    # is bandwidth-bound at 1 TFLOP/s and 1 TB/s). One 1,000-token chunk, 100 sequences decoding
    # at 1e8 tokens of context: the GEMMs, the prefill attention and the decode KV reads each at
    # their own roofline, summed. One max over the whole step would hide the 80 GB of KV reads
    # under the GEMMs' FLOPs: 1.140 s instead of 1.180 s.
    eng = build_engine(compose_cfg([*[o for o in SIMPLE if o != "model.kv_dtype_bytes=2"],
                                    "model.kv_dtype_bytes=4"]), 4)
    n, b, ctx = 1000, 100, 1e8
    gemms = (2 * (5e8 - 2 * SIMPLE_HEAD) * (n + b) + 2 * SIMPLE_HEAD * (1 + b)) / SIMPLE_FLOPS
    prefill_attention = max(4 * n * n / 2, 8 * n) / SIMPLE_FLOPS
    decode_attention = max(4 * b * ctx, 8 * b * ctx) / 1e12  # bytes: 80 GB at 1 TB/s
    assert eng.hw.pass_overhead_s == 0
    step = eng.roofline.step_s([(n, 0)], b, ctx)
    assert step == pytest.approx(gemms + prefill_attention + decode_attention, rel=1e-12)
    assert step == pytest.approx(1.1800009253, rel=1e-9)


@pytest.mark.parametrize("name", ["llama3_1_70b", "deepseek_v3"])
def test_decode_in_chunk_is_what_the_batch_adds_to_a_chunk_step(name):
    # the analytic engine prices a prefill's mixed steps with this shortcut: it must be the
    # difference of the two steps exactly (a dense and an MoE/MLA model; cached and not)
    roof = Roofline(model(name), hardware("h100_sxm"), 8)
    for chunk, cached, batch, ctx in [(8192, 0, 1, 1000.0), (4000, 30_000, 7, 26_123.5), (17, 5, 200, 9e4)]:
        want = roof.step_s([(chunk, cached)], batch, ctx) - roof.step_s([(chunk, cached)])
        assert roof.decode_in_chunk_s(chunk, cached, batch, ctx) == want
        # the batch's KV reads are their own operator: never hidden under the chunk's GEMMs
        assert want >= ops(roof, [(chunk, cached)], batch, ctx)["decode_attention"].seconds > 0


def _request(i, n_in, n_out, bs, rng):
    blocks = chain_hashes(None, rng.integers(1, 2**63, size=n_in // bs, dtype=np.uint64))
    rid = f"r{i}"
    return Request(rid, rid, 0, "t", 0.0, n_in, n_out, blocks, bs,
                   output_blocks_after(blocks, rid, n_in, n_out, bs))


@pytest.mark.parametrize("admission", ["greedy", "reserve"])
def test_reserve_admission_never_preempts(admission):
    # HBM for 40 blocks of 16 tokens; 12 calls of 64 + 256 tokens (21 blocks each at the end)
    cache = {"name": "small", "tiers": [{"name": "hbm", "capacity_bytes": 40 * 16 * 131_072.0}]}
    engine = OffloadEngine(conf("model", "llama3_1_8b"), conf("hardware", "h100_sxm"), cache, 1, 1, 16,
                           admission=admission)
    rng = np.random.default_rng(0)
    for i in range(12):
        engine.submit(_request(i, 64, 256, 16, rng), 0.0)
    done = []
    while (t := engine.next_event_time()) is not None:
        done += engine.advance(t)
    assert len(done) == 12
    if admission == "reserve":
        assert engine.preemptions == 0
        assert max(c.start_s for c in done) > 0  # calls waited for room instead
    else:
        assert engine.preemptions > 0  # greedy admits them all and must preempt


def test_bad_admission_is_a_config_error():
    with pytest.raises(ConfigError, match="engine.admission"):
        OffloadEngine(conf("model", "llama3_1_8b"), conf("hardware", "h100_sxm"),
                      conf("cache", "hbm_only"), 1, 1, 16, admission="lazy")


def test_hbm_bytes_are_what_the_driver_reports():
    assert hardware("h100_sxm").hbm_bytes == 81_559 * 2**20
    assert hardware("h200").hbm_bytes == 143_771 * 2**20
    assert hardware("b200").hbm_bytes == 183_359 * 2**20
    assert hardware("a100_sxm_80g").hbm_bytes == 81_920 * 2**20
    assert hardware("l40s").hbm_bytes == 46_068 * 2**20
    assert hardware("b200").links["pcie"] == 64e9  # HGX B200 hosts are PCIe Gen5
    assert math.isclose(hardware("h800").links["nvlink"], 200e9)
