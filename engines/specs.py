"""Typed views of the model/, hardware/ and cache/ config groups, with the sizes derived from
them (KV bytes per token, weight bytes, tier capacities)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration the user must fix; printed as one line."""


def _need(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{where}: '{key}' is missing")
    return cfg[key]


DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}
BYTES_DTYPE = {4.0: "fp32", 2.0: "bf16", 1.0: "fp8", 0.5: "fp4"}


def _dtype(cfg: Mapping[str, Any], key: str, where: str) -> tuple[str, float]:
    """(name, bytes) of a precision. ``<key>`` names it (bf16, fp8, ...); the older
    ``<key>_bytes``, when set, wins (so existing overrides keep working)."""
    nbytes, name = cfg.get(f"{key}_bytes"), cfg.get(key)
    if nbytes is not None:
        try:
            nbytes = float(nbytes)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}_bytes must be a number, got {nbytes!r}") from None
        if nbytes <= 0:
            raise ConfigError(f"{where}: {key}_bytes must be > 0")
        return BYTES_DTYPE.get(nbytes, "bf16"), nbytes
    if name is None:
        raise ConfigError(f"{where}: '{key}' is missing")
    name = str(name).lower()
    if name not in DTYPE_BYTES:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(DTYPE_BYTES)}, got {name!r}")
    return name, DTYPE_BYTES[name]


def check_keys(cfg: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """A key nothing reads is a typo in a hand-written config: without this check it would leave
    the real key at its default (no latency, no overhead, unbounded bandwidth) and say nothing."""
    for key in cfg:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")


MODEL_KEYS = (
    "name", "layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "params",
    "active_params", "attention", "weight_dtype", "weight_dtype_bytes", "kv_dtype", "kv_dtype_bytes",
    "kv_lora_rank", "qk_rope_head_dim", "q_lora_rank", "qk_nope_head_dim", "v_head_dim", "experts",
    "experts_per_token", "shared_experts", "moe_intermediate", "dense_layers", "expert_parallel",
    "dp_attention", "rope_theta", "norm_eps", "qkv_bias", "tie_embeddings")  # (last four: the torch model's)
HARDWARE_KEYS = (
    "name", "flops", "flops_by_dtype", "hbm_bytes", "hbm_bw", "links", "efficiency", "power_w", "overhead_s",
    "overhead_eager_s", "cuda_graphs", "collective_latency_s", "overlap_collectives")
EFFICIENCY_KEYS = ("flops", "hbm", "link", "attention", "collective")


@dataclass(frozen=True)
class ModelSpec:
    """A model's shapes (as its config.json gives them) and the precisions it is served in.

    ``params`` sizes the weights in HBM; the per-token work is derived from the shapes (see
    ``linear_params`` and friends), so a MoE's active work follows its experts, not a constant.
    Parameters the shapes do not name (norms, biases, or a config that only states ``params``)
    count as one more dense matrix every token goes through (``residual_params``).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: float
    active_params: float
    kv_dtype_bytes: float
    weight_dtype_bytes: float
    attention: str  # "gqa" (MHA is gqa with kv_heads == heads) or "mla"
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    q_lora_rank: int = 0  # MLA: 0 = a plain q projection
    qk_nope_head_dim: int = 0  # MLA: 0 = head_dim
    v_head_dim: int = 0  # MLA: 0 = head_dim
    experts: int = 0  # routed experts per MoE layer (0: dense model)
    experts_per_token: int = 0
    shared_experts: int = 0
    moe_intermediate: int = 0
    dense_layers: int = 0  # MoE models: the first layers that keep a dense MLP
    expert_parallel: bool = False  # experts spread over the tp GPUs (all-to-all instead of all-reduce)
    dp_attention: bool = False  # attention data-parallel over the tp GPUs (DeepSeek/SGLang deployment)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> ModelSpec:
        where = f"model {cfg.get('name', '?')}"
        check_keys(cfg, MODEL_KEYS, where)
        fields = {k: _need(cfg, k, where) for k in (
            "name", "layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
            "params", "active_params", "attention")}
        fields["weight_dtype"], fields["weight_dtype_bytes"] = _dtype(cfg, "weight_dtype", where)
        fields["kv_dtype"], fields["kv_dtype_bytes"] = _dtype(cfg, "kv_dtype", where)
        ints = ("kv_lora_rank", "qk_rope_head_dim", "q_lora_rank", "qk_nope_head_dim", "v_head_dim",
                "experts", "experts_per_token", "shared_experts", "moe_intermediate", "dense_layers")
        try:
            for key in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"):
                fields[key] = int(fields[key])
            fields["params"] = float(fields["params"])
            fields["active_params"] = float(fields["active_params"])
            spec = cls(**fields, **{k: int(cfg.get(k) or 0) for k in ints},
                       expert_parallel=bool(cfg.get("expert_parallel", False)),
                       dp_attention=bool(cfg.get("dp_attention", False)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if spec.attention not in ("gqa", "mla"):
            raise ConfigError(f"{where}: attention must be gqa or mla, got {spec.attention!r}")
        if spec.attention == "mla" and not spec.kv_lora_rank:
            raise ConfigError(f"{where}: mla needs kv_lora_rank and qk_rope_head_dim")
        if spec.experts and not (0 < spec.experts_per_token <= spec.experts and spec.moe_intermediate):
            raise ConfigError(f"{where}: a MoE needs 0 < experts_per_token <= experts and moe_intermediate")
        if spec.dense_layers > spec.layers:
            raise ConfigError(f"{where}: dense_layers {spec.dense_layers} > layers {spec.layers}")
        return spec

    # -- KV ---------------------------------------------------------------------------------
    @property
    def kv_bytes_per_token(self) -> float:
        """KV bytes per token for the whole model (all GPUs together), in the KV precision."""
        if self.attention == "mla":
            return self.layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_dtype_bytes
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    def kv_shards(self, tp: int) -> int:
        """GPUs over which one token's KV is split: GQA splits KV heads (up to their number);
        MLA's latent is shared by all heads, so tensor-parallel ranks each hold all of it, unless
        attention is data-parallel (each GPU holds only its own sequences)."""
        if self.dp_attention:
            return tp
        return 1 if self.attention == "mla" else min(tp, self.kv_heads)

    def kv_bytes_per_token_per_gpu(self, tp: int) -> float:
        return self.kv_bytes_per_token / self.kv_shards(tp)

    # -- weights, from the shapes -----------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        """Width of one head's query-key product (MLA: the no-rope part plus the rope part)."""
        if self.attention == "mla":
            return (self.qk_nope_head_dim or self.head_dim) + self.qk_rope_head_dim
        return self.head_dim

    @property
    def v_dim(self) -> int:
        return self.v_head_dim or self.head_dim

    @property
    def kv_up_params(self) -> float:
        """MLA: kv_b_proj, latent -> per-head no-rope keys and values (per layer)."""
        if self.attention != "mla":
            return 0.0
        return self.kv_lora_rank * self.heads * ((self.qk_nope_head_dim or self.head_dim) + self.v_dim)

    @property
    def attention_params(self) -> float:
        """QKV and output projections of one layer (MLA: q_a, q_b, kv_a, kv_b, o)."""
        h, nh = self.hidden, self.heads
        if self.attention == "mla":
            q = (h * self.q_lora_rank + self.q_lora_rank * nh * self.qk_head_dim if self.q_lora_rank
                 else h * nh * self.qk_head_dim)
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            return q + kv_a + self.kv_up_params + nh * self.v_dim * h
        return h * nh * self.head_dim * 2 + 2 * h * self.kv_heads * self.head_dim

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers if self.experts else 0

    @property
    def expert_params(self) -> float:
        """One routed expert (gate, up, down)."""
        return 3.0 * self.hidden * self.moe_intermediate

    @property
    def mlp_params(self) -> float:
        """Per-token MLP weights over all layers: dense MLPs, shared experts and routers (the
        routed experts are counted apart, by the experts a step touches)."""
        dense_layers = self.dense_layers if self.experts else self.layers
        moe = self.moe_layers * (self.shared_experts * self.expert_params + self.hidden * self.experts)
        return dense_layers * 3.0 * self.hidden * self.intermediate + moe

    @property
    def lm_head_params(self) -> float:
        return float(self.vocab * self.hidden)

    @property
    def shape_params(self) -> float:
        """Every weight the shapes name: projections, MLPs, all experts, embedding, lm_head."""
        return (self.layers * self.attention_params + self.mlp_params
                + self.moe_layers * self.experts * self.expert_params + 2 * self.lm_head_params)

    @property
    def residual_params(self) -> float:
        """``params`` the shapes do not account for, treated as a dense matrix per token."""
        return max(self.params - self.shape_params, 0.0)

    def distinct_experts(self, tokens: float) -> float:
        """Expected routed experts one MoE layer touches for ``tokens`` tokens each routed to
        top-k of E (uniform routing): E (1 - (1 - k/E)^T)."""
        if not self.experts or tokens <= 0:
            return 0.0
        e = self.experts
        return e * (1.0 - (1.0 - self.experts_per_token / e) ** tokens)

    @property
    def weight_bytes(self) -> float:
        return self.params * self.weight_dtype_bytes

    @property
    def active_weight_bytes(self) -> float:
        """Weights one token's pass reads: dense weights plus its top-k experts, lm_head once."""
        active = (self.layers * self.attention_params + self.mlp_params + self.residual_params
                  + self.moe_layers * self.experts_per_token * self.expert_params + self.lm_head_params)
        return active * self.weight_dtype_bytes

    @property
    def attention_width(self) -> int:
        """heads x head_dim: the width of the score and value products per layer."""
        return self.heads * self.head_dim


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU (or CPU) as the roofline sees it. ``flops`` is the dense peak of the default
    precision (bf16 on GPUs); ``flops_by_dtype`` adds the peaks of other precisions the device
    has tensor cores for (fp8, fp4); a precision it lacks runs at ``flops`` (weight-only)."""

    name: str
    flops: float  # peak dense bf16 FLOP/s per GPU
    hbm_bytes: float
    hbm_bw: float  # bytes/s per GPU
    links: Mapping[str, float]  # bytes/s per direction per GPU
    flops_efficiency: float
    hbm_efficiency: float
    link_efficiency: float
    power_w: float
    overhead_s: float = 0.0  # fixed cost of one forward pass (kernel launches, scheduling)
    attention_efficiency: float = 0.0  # share of peak that attention reaches; 0: as the dense part
    flops_by_dtype: Mapping[str, float] = field(default_factory=dict)
    overhead_eager_s: float = 0.0  # the same without CUDA graphs
    cuda_graphs: bool = True
    collective_latency_s: float = 0.0  # fixed cost of one all-reduce / all-to-all
    collective_efficiency: float = 0.0  # share of links.nvlink a collective reaches; 0: as link
    overlap_collectives: bool = False  # true: collectives hide under compute (max, not sum)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> HardwareSpec:
        where = f"hardware {cfg.get('name', '?')}"
        check_keys(cfg, HARDWARE_KEYS, where)
        eff = _need(cfg, "efficiency", where)
        if isinstance(eff, Mapping):
            check_keys(eff, EFFICIENCY_KEYS, where + " efficiency")
        try:
            by_dtype = {str(k): float(v) for k, v in (cfg.get("flops_by_dtype") or {}).items()}
            overhead = float(cfg.get("overhead_s") or 0.0)
            spec = cls(
                name=_need(cfg, "name", where),
                flops=float(_need(cfg, "flops", where)),
                hbm_bytes=float(_need(cfg, "hbm_bytes", where)),
                hbm_bw=float(_need(cfg, "hbm_bw", where)),
                links={k: float(v) for k, v in _need(cfg, "links", where).items()},
                flops_efficiency=float(_need(eff, "flops", where + " efficiency")),
                hbm_efficiency=float(_need(eff, "hbm", where + " efficiency")),
                link_efficiency=float(_need(eff, "link", where + " efficiency")),
                power_w=float(cfg.get("power_w") or 0.0),
                overhead_s=overhead,
                attention_efficiency=float(eff.get("attention") or eff["flops"]),
                flops_by_dtype=by_dtype,
                overhead_eager_s=float(cfg.get("overhead_eager_s") or overhead),
                cuda_graphs=bool(cfg.get("cuda_graphs", True)),
                collective_latency_s=float(cfg.get("collective_latency_s") or 0.0),
                collective_efficiency=float(eff.get("collective") or eff["link"]),
                overlap_collectives=bool(cfg.get("overlap_collectives", False)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        for label, v in (("flops", spec.flops_efficiency), ("hbm", spec.hbm_efficiency),
                         ("link", spec.link_efficiency), ("attention", spec.attention_efficiency),
                         ("collective", spec.collective_efficiency)):
            if not 0 < v <= 1:
                raise ConfigError(f"{where}: efficiency.{label} must be in (0, 1], got {v}")
        for dtype in spec.flops_by_dtype:
            if dtype not in DTYPE_BYTES:
                raise ConfigError(f"{where}: flops_by_dtype has unknown precision {dtype!r}")
        return spec

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s of a precision; without tensor cores for it, the default peak."""
        return self.flops_by_dtype.get(dtype, self.flops)

    @property
    def pass_overhead_s(self) -> float:
        return self.overhead_s if self.cuda_graphs else self.overhead_eager_s


@dataclass(frozen=True)
class TierSpec:
    """One KV tier. Bandwidths are per GPU: each GPU moves its own shard of the KV over its own
    link, so a tensor-parallel instance moves ``tp`` times as much in the same time."""

    name: str
    capacity_bytes: float  # per instance (all its GPUs; from capacity_bytes_per_gpu x tp); inf for unbounded
    read_bw: float  # bytes/s per GPU, tier -> HBM
    write_bw: float  # bytes/s per GPU, HBM -> tier
    latency_s: float
    shared: bool = False  # one tier for all instances (a remote warehouse)
    aggregate_read_bw: float = math.inf  # a shared tier's total bandwidth, all GPUs together
    aggregate_write_bw: float = math.inf


def hbm_kv_capacity_bytes(model: ModelSpec, hw: HardwareSpec, tp: int, reserve_fraction: float) -> float:
    """KV bytes an instance's HBM can hold: HBM minus weights minus a reserve (activations,
    CUDA graphs, fragmentation), over its tp GPUs."""
    per_gpu = hw.hbm_bytes * (1 - reserve_fraction) - model.weight_bytes / tp
    if per_gpu <= 0:
        raise ConfigError(f"model {model.name} does not fit on {tp} x {hw.name}: weights need "
                          f"{model.weight_bytes / tp / 1e9:.1f} GB per GPU, "
                          f"{hw.hbm_bytes * (1 - reserve_fraction) / 1e9:.1f} GB usable")
    return per_gpu * tp


def _per_gpu_capacity(tier: Mapping[str, Any], tp: int, where: str) -> float:
    """An instance's share of a tier sized per GPU (``capacity_bytes_per_gpu`` x tp): host DRAM
    and local drives come with the GPUs of a host, so a tp=4 instance gets half a tp=8 one's.
    ``capacity_bytes``, when set, overrides it."""
    per_gpu = tier.get("capacity_bytes_per_gpu")
    if per_gpu is None:
        raise ConfigError(f"{where}: 'capacity_bytes' (or 'capacity_bytes_per_gpu') is missing")
    if tier.get("shared", False):
        raise ConfigError(f"{where}: a shared tier is sized as a whole: set capacity_bytes")
    try:
        return float(per_gpu) * tp
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: capacity_bytes_per_gpu must be a number, got {per_gpu!r}") from None


CACHE_KEYS = ("name", "hbm_reserve_fraction", "eviction", "eviction_headroom", "tiers")
TIER_KEYS = ("name", "capacity_bytes", "capacity_bytes_per_gpu", "read_bw", "write_bw", "latency_s", "shared",
             "aggregate_read_bw", "aggregate_write_bw")


def check_cache_keys(cache_cfg: Mapping[str, Any]) -> None:
    """The cache config and each of its tiers hold only keys something reads."""
    check_keys(cache_cfg, CACHE_KEYS, f"cache {cache_cfg.get('name', '?')}")
    for i, t in enumerate(cache_cfg.get("tiers") or ()):
        check_keys(t, TIER_KEYS, f"cache {cache_cfg.get('name', '?')} tier {t.get('name', i)}")


def tiers_from_cfg(cache_cfg: Mapping[str, Any], model: ModelSpec, hw: HardwareSpec,
                   tp: int) -> list[TierSpec]:
    check_cache_keys(cache_cfg)
    tiers_cfg = _need(cache_cfg, "tiers", f"cache {cache_cfg.get('name', '?')}")
    tiers = []
    for i, t in enumerate(tiers_cfg):
        where = f"cache {cache_cfg.get('name', '?')} tier {t.get('name', i)}"
        cap = t.get("capacity_bytes")
        if i == 0:
            if cap in (None, "auto"):
                cap = hbm_kv_capacity_bytes(model, hw, tp, float(cache_cfg.get("hbm_reserve_fraction", 0.1)))
        elif cap is None:
            cap = _per_gpu_capacity(t, tp, where)
        cap = math.inf if cap in ("inf", math.inf) else float(cap)
        if cap <= 0:
            raise ConfigError(f"{where}: capacity_bytes must be > 0")
        tiers.append(TierSpec(
            name=_need(t, "name", where),
            capacity_bytes=cap,
            read_bw=float(t.get("read_bw") or math.inf) if i == 0 else float(_need(t, "read_bw", where)),
            write_bw=float(t.get("write_bw") or math.inf) if i == 0 else float(_need(t, "write_bw", where)),
            latency_s=float(t.get("latency_s") or 0.0),
            shared=bool(t.get("shared", False)),
            aggregate_read_bw=float(t.get("aggregate_read_bw") or math.inf),
            aggregate_write_bw=float(t.get("aggregate_write_bw") or math.inf),
        ))
    return tiers
