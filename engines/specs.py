"""Typed views of the model/, hardware/ and cache/ config groups, with the sizes derived from
them (KV bytes per token, weight bytes, tier capacities)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration the user must fix; printed as one line."""


def _need(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{where}: '{key}' is missing")
    return cfg[key]


@dataclass(frozen=True)
class ModelSpec:
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
    kv_dtype_bytes: int
    weight_dtype_bytes: int
    attention: str  # "gqa" (MHA is gqa with kv_heads == heads) or "mla"
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> ModelSpec:
        where = f"model {cfg.get('name', '?')}"
        fields = {k: _need(cfg, k, where) for k in (
            "name", "layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
            "params", "active_params", "kv_dtype_bytes", "weight_dtype_bytes", "attention")}
        try:
            for key in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
                        "kv_dtype_bytes", "weight_dtype_bytes"):
                fields[key] = int(fields[key])
            fields["params"] = float(fields["params"])
            fields["active_params"] = float(fields["active_params"])
            spec = cls(**fields, kv_lora_rank=int(cfg.get("kv_lora_rank") or 0),
                       qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if spec.attention not in ("gqa", "mla"):
            raise ConfigError(f"{where}: attention must be gqa or mla, got {spec.attention!r}")
        if spec.attention == "mla" and not spec.kv_lora_rank:
            raise ConfigError(f"{where}: mla needs kv_lora_rank and qk_rope_head_dim")
        return spec

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token for the whole model (all GPUs together)."""
        if self.attention == "mla":
            return self.layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_dtype_bytes
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    def kv_shards(self, tp: int) -> int:
        """GPUs over which one token's KV is split: GQA splits KV heads (up to their number);
        MLA's latent is shared by all heads, so tensor-parallel ranks each hold all of it."""
        return 1 if self.attention == "mla" else min(tp, self.kv_heads)

    def kv_bytes_per_token_per_gpu(self, tp: int) -> float:
        return self.kv_bytes_per_token / self.kv_shards(tp)

    @property
    def weight_bytes(self) -> float:
        return self.params * self.weight_dtype_bytes

    @property
    def active_weight_bytes(self) -> float:
        """Weights read by one forward pass (MoE: active experts only, roughly)."""
        return self.active_params * self.weight_dtype_bytes

    @property
    def attention_width(self) -> int:
        """heads x head_dim: the width of the score and value products per layer."""
        return self.heads * self.head_dim


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    flops: float  # peak dense bf16 FLOP/s per GPU
    hbm_bytes: float
    hbm_bw: float  # bytes/s per GPU
    links: Mapping[str, float]  # bytes/s per direction per GPU
    flops_efficiency: float
    hbm_efficiency: float
    link_efficiency: float
    power_w: float
    overhead_s: float = 0.0  # fixed cost of one forward pass (kernel launches, Python); 0 on GPUs
    attention_efficiency: float = 0.0  # share of peak that attention reaches; 0: as the dense part

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> HardwareSpec:
        where = f"hardware {cfg.get('name', '?')}"
        eff = _need(cfg, "efficiency", where)
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
            overhead_s=float(cfg.get("overhead_s") or 0.0),
            attention_efficiency=float(eff.get("attention") or eff["flops"]),
        )
        for label, v in (("flops", spec.flops_efficiency), ("hbm", spec.hbm_efficiency),
                         ("link", spec.link_efficiency), ("attention", spec.attention_efficiency)):
            if not 0 < v <= 1:
                raise ConfigError(f"{where}: efficiency.{label} must be in (0, 1], got {v}")
        return spec


@dataclass(frozen=True)
class TierSpec:
    """One KV tier. Bandwidths are per GPU: each GPU moves its own shard of the KV over its own
    link, so a tensor-parallel instance moves ``tp`` times as much in the same time."""

    name: str
    capacity_bytes: float  # per instance (all its GPUs); inf for unbounded
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


def tiers_from_cfg(cache_cfg: Mapping[str, Any], model: ModelSpec, hw: HardwareSpec,
                   tp: int) -> list[TierSpec]:
    tiers_cfg = _need(cache_cfg, "tiers", f"cache {cache_cfg.get('name', '?')}")
    tiers = []
    for i, t in enumerate(tiers_cfg):
        where = f"cache {cache_cfg.get('name', '?')} tier {t.get('name', i)}"
        cap = t.get("capacity_bytes")
        if i == 0:
            if cap in (None, "auto"):
                cap = hbm_kv_capacity_bytes(model, hw, tp, float(cache_cfg.get("hbm_reserve_fraction", 0.1)))
        elif cap is None:
            raise ConfigError(f"{where}: 'capacity_bytes' is missing")
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
