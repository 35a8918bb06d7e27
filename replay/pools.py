"""The GPU pools a run provisions, read from the ``deployment`` group: one pool (colocated: the
run's hardware, ``instances`` x ``parallel.tp``), or a prefill pool and a decode pool (pd),
each with its own hardware, tp, count and GPU price. Cost and the run table count every pool."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engines.specs import ConfigError, check_keys

HARDWARE_DIR = Path(__file__).resolve().parent.parent / "conf" / "hardware"
MODES = ("colocated", "pd")


@dataclass(frozen=True)
class Pool:
    name: str  # "all" (colocated), "prefill" or "decode"
    hardware: dict[str, Any]
    cache: dict[str, Any]  # the run's cache config, resolved against this pool's hardware
    tp: int
    count: int
    gpu_hour_usd: float

    @property
    def gpus(self) -> int:
        return self.tp * self.count

    @property
    def power_w(self) -> float:
        return float(self.hardware.get("power_w") or 0.0)


def mode(cfg: DictConfig) -> str:
    m = str((cfg.get("deployment") or {}).get("mode", "colocated"))
    if m not in MODES:
        raise ConfigError(f"deployment.mode must be one of {', '.join(MODES)}, got {m!r}")
    return m


def load_hardware(name: str) -> DictConfig:
    """A hardware config by its name in conf/hardware/."""
    path = HARDWARE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml")))
        raise ConfigError(f"deployment: no hardware {name!r} (known: {known})")
    return OmegaConf.load(path)


def _pool(cfg: DictConfig, name: str, hardware: Any, tp: Any, count: Any,
          price: Any) -> Pool:
    hw = cfg.hardware if hardware is None else load_hardware(str(hardware))
    try:  # the cache's links (${hardware.links.pcie}) are this pool's
        both = OmegaConf.create({"hardware": OmegaConf.to_container(hw, resolve=True),
                                 "cache": OmegaConf.to_container(cfg.cache, resolve=False)})
        resolved = OmegaConf.to_container(both, resolve=True)
        tp, count = int(tp), int(count)
        price = float(cfg.pricing.self_hosted.gpu_hour_usd if price is None else price)
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        raise ConfigError(f"deployment.{name}: {str(exc).splitlines()[0]}") from None
    if tp < 1 or count < 1 or price < 0:
        raise ConfigError(f"deployment.{name}: need tp >= 1, count >= 1, gpu_hour_usd >= 0")
    return Pool(name, resolved["hardware"], resolved["cache"], tp, count, price)


def pools(cfg: DictConfig) -> list[Pool]:
    """Every pool of the run's deployment."""
    if mode(cfg) == "colocated":
        return [_pool(cfg, "all", None, cfg.parallel.tp, cfg.instances, None)]
    dep = cfg.deployment
    check_keys(dep, ("mode", "prefill", "decode", "link"), "deployment")
    out = []
    for name in ("prefill", "decode"):
        p = dep.get(name)
        if p is None:
            raise ConfigError(f"deployment.{name} is missing")
        check_keys(p, ("hardware", "tp", "count", "gpu_hour_usd"), f"deployment.{name}")
        out.append(_pool(cfg, name, p.get("hardware"), p.get("tp", cfg.parallel.tp), p.get("count", 1),
                         p.get("gpu_hour_usd")))
    return out


def describe(pools_: list[Pool]) -> str:
    """e.g. 'prefill 1 x 8 rubin_cpx + decode 2 x 8 h100_sxm'."""
    return " + ".join(f"{p.name} {p.count} x {p.tp} {p.hardware.get('name')}" for p in pools_)


def blended(pools_: list[Pool]) -> tuple[int, float, float]:
    """(GPUs, GPU-weighted $/GPU-hour, GPU-weighted power): every GPU for the span at its own
    pool's price is the GPU count at the weighted price, exactly; the energy of busy GPU-seconds
    and the busy-only cost use the weighted figures (per-pool figures: ``pool_figures``)."""
    gpus = sum(p.gpus for p in pools_)
    return (gpus, sum(p.gpus * p.gpu_hour_usd for p in pools_) / gpus,
            sum(p.gpus * p.power_w for p in pools_) / gpus)


SPLIT = (("queue", "queue_s"), ("prefill", "prefill_s"), ("decode_queue", "decode_queue_s"),
         ("transfer", "transfer_s"), ("first_step", "first_step_s"))


def pool_figures(requests: Any, pools_: list[Pool], span_s: float, pricing: Any) -> dict[str, Any]:
    """Per pool: GPUs, busy GPU-seconds, utilisation over the run's span, provisioned $ of its
    GPUs at its own price (plus the energy of its busy GPU-seconds; the KV tiers bought are in
    the run's total only); and the calls' TTFT split (sums to the TTFT) and the KV moved between
    the pools."""
    from replay.summary import _pct

    out: dict[str, Any] = {}
    for p in pools_:
        busy = float(requests[f"{p.name}_gpu_s"].sum())
        prov = p.gpus * span_s
        out[p.name] = {
            "hardware": p.hardware.get("name"), "tp": p.tp, "count": p.count, "gpus": p.gpus,
            "gpu_hour_usd": p.gpu_hour_usd, "gpu_s": busy, "provisioned_gpu_s": prov,
            "gpu_utilisation": busy / prov if prov else None,
            "provisioned_usd": dataclasses.replace(pricing, gpu_hour_usd=p.gpu_hour_usd).provisioned_cost(
                p.gpus, span_s, busy, p.power_w),
        }
    n = requests.height
    out["ttft_split_s"] = {name: _pct(requests[col]) for name, col in SPLIT}
    out["ttft_split_mean_s"] = {name: float(requests[col].mean()) if n else None for name, col in SPLIT}
    out["transfer_bytes"] = float(requests["transfer_bytes"].sum())
    out["transfer_bytes_per_call"] = float(requests["transfer_bytes"].mean()) if n else None
    return out
