"""Sizes and times from the model/hardware configs, checked against formulas worked out here."""

import re

import pytest
from conftest import conf

from engines.roofline import Roofline, prefill_flops
from engines.specs import (
    ConfigError,
    HardwareSpec,
    ModelSpec,
    TierSpec,
    hbm_kv_capacity_bytes,
    tiers_from_cfg,
)

GiB = 2**30


def model(name):
    return ModelSpec.from_cfg(conf("model", name))


def hardware(name, **changes):
    cfg = conf("hardware", name)
    cfg["efficiency"].update(changes)
    return HardwareSpec.from_cfg(cfg)


def test_kv_bytes_per_token():
    assert model("llama3_1_8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    assert model("llama3_1_70b").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680
    assert model("qwen2_5_32b").kv_bytes_per_token == 2 * 64 * 8 * 128 * 2 == 262_144
    assert model("deepseek_v3").kv_bytes_per_token == 61 * (512 + 64) * 2 == 70_272


def test_kv_per_gpu_under_tensor_parallelism():
    m = model("llama3_1_70b")
    assert m.kv_bytes_per_token_per_gpu(8) == 327_680 / 8
    assert m.kv_bytes_per_token_per_gpu(16) == 327_680 / 8  # beyond 8 KV heads they replicate
    assert model("deepseek_v3").kv_bytes_per_token_per_gpu(8) == 70_272  # MLA latent on every rank


# Linear weights every token goes through (projections, MLP, the few norm weights the shapes leave
# out) and the lm_head, from config.json shapes: logits only at the sampled position.
L8_TOKEN = 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
L8_HEAD = 128256 * 4096
L70_TOKEN = 80 * (8192 * 8192 * 2 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
L70_HEAD = 128256 * 8192


def test_prefill_flops_8k_on_8b_against_the_formula():
    n = 8192
    residual = 8.03e9 - L8_TOKEN - 2 * L8_HEAD  # norms (the config's 8.03e9 is rounded)
    dense = 2 * (L8_TOKEN + residual) * n + 2 * L8_HEAD  # lm_head once: one sampled position
    attention = 2 * 2 * 32 * (32 * 128) * (n * n / 2)
    assert prefill_flops(model("llama3_1_8b"), n) == pytest.approx(dense + attention, rel=1e-12)
    # with a cached prefix of c tokens the new ones attend to c plus their causal part
    c = 4096
    assert prefill_flops(model("llama3_1_8b"), n, c) == pytest.approx(
        dense + 2 * 2 * 32 * 4096 * (n * c + n * n / 2), rel=1e-12)


def test_100k_prefill_on_70b_tp8_h100_is_physical():
    m, hw = model("llama3_1_70b"), hardware("h100_sxm")
    n = 100_000
    flops = prefill_flops(m, n)
    residual = 70.6e9 - L70_TOKEN - 2 * L70_HEAD
    by_hand = 2 * (L70_TOKEN + residual) * n + 2 * L70_HEAD + 2 * 2 * 80 * (64 * 128) * n * n / 2
    assert flops == pytest.approx(by_hand) and flops == pytest.approx(2.68e16, rel=0.01)
    floor = flops / (8 * 989.4e12)
    assert floor == pytest.approx(3.39, rel=0.01)  # 3.44 s when the lm_head ran on every token
    t = Roofline(m, hw, 8).prefill_s(n)
    assert 1.2 * floor <= t <= 3.0 * floor
    # at 100% efficiency it reaches the floor (up to float rounding), never below
    assert Roofline(m, hardware("h100_sxm", flops=1.0, hbm=1.0, attention=1.0), 8).prefill_s(n) >= \
        floor * (1 - 1e-12)


def test_tp8_reload_uses_eight_links_in_parallel():
    hw = hardware("h100_sxm", link=1.0)
    dram = TierSpec("dram", 1e12, read_bw=64e9, write_bw=64e9, latency_s=0.0)
    total = 40 * GiB
    roof = Roofline(model("llama3_1_70b"), hw, 8)
    assert roof.load_s(dram, total) == pytest.approx(0.671, abs=0.001)  # one Gen5 x16 link
    assert roof.load_s(dram, total / 8) == pytest.approx(0.0839, abs=0.0005)  # eight links


def test_decode_step_reads_weights_once_and_every_sequence_kv():
    m, hw = model("llama3_1_70b"), hardware("h100_sxm", hbm=1.0)
    bw = 8 * 3.35e12
    residual = 70.6e9 - L70_TOKEN - 2 * L70_HEAD
    weights = (L70_TOKEN + residual + L70_HEAD) * 2 / bw  # batch 16 is memory-bound: bytes rule
    kv = 16 * 10_000 * 327_680 / bw
    allreduce = hw.collective_latency_s + 2 * 7 / 8 * 16 * 8192 * 2 / (450e9 * hw.collective_efficiency)
    by_hand = hw.overhead_s + weights + kv + 2 * 80 * allreduce
    assert Roofline(m, hw, 8).decode_step_s(16, 10_000) == pytest.approx(by_hand)


def test_hbm_capacity_is_hbm_minus_weights_minus_reserve():
    m, hw = model("llama3_1_70b"), hardware("h100_sxm")
    assert hbm_kv_capacity_bytes(m, hw, 8, 0.1) == pytest.approx(8 * (81_559 * 2**20 * 0.9 - 70.6e9 * 2 / 8))
    with pytest.raises(ValueError, match="does not fit"):
        hbm_kv_capacity_bytes(m, hw, 1, 0.1)


def cache(name):
    """A shipped tier set, its links (interpolated from the hardware in a run) set to PCIe Gen5."""
    cfg = conf("cache", name)
    for t in cfg["tiers"][1:]:
        t.update({k: 64e9 for k in ("read_bw", "write_bw") if isinstance(t[k], str)})
    return cfg


def test_host_tiers_are_sized_per_gpu_and_an_instance_capacity_overrides():
    m, hw = model("llama3_1_70b"), hardware("h100_sxm")
    nvme = cache("hbm_dram_nvme")
    by_tp = {tp: {t.name: t.capacity_bytes for t in tiers_from_cfg(nvme, m, hw, tp)} for tp in (4, 8)}
    # an 8-GPU host's drives and half of its 2 TB of DRAM, shared by its GPUs: a tp=4 instance
    # gets half of what a tp=8 one gets
    assert by_tp[8]["dram"] == 1e12 and by_tp[4]["dram"] == 0.5e12
    assert by_tp[8]["nvme"] == 8 * 7.68e12 and by_tp[4]["nvme"] == 4 * 7.68e12
    nvme["tiers"][1]["capacity_bytes"] = 3e11  # set for the instance: it wins
    assert tiers_from_cfg(nvme, m, hw, 4)[1].capacity_bytes == 3e11


@pytest.mark.parametrize("change,message", [
    ({"capacity_bytes_per_gpu": None}, "'capacity_bytes' (or 'capacity_bytes_per_gpu') is missing"),
    ({"capacity_bytes_per_gpu": "lots"}, "capacity_bytes_per_gpu must be a number, got 'lots'"),
    ({"shared": True}, "a shared tier is sized as a whole: set capacity_bytes"),
])
def test_a_bad_per_gpu_capacity_is_one_line(change, message):
    dram = cache("hbm_dram")
    dram["tiers"][1].update(change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiers_from_cfg(dram, model("llama3_1_70b"), hardware("h100_sxm"), 8)
