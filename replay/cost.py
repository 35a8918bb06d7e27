"""Self-hosted cost of GPU time and of KV held in tiers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import polars as pl

from engines.specs import ConfigError

SECONDS_PER_MONTH = 30.44 * 86_400
Seconds = TypeVar("Seconds", float, pl.Expr)  # one call's figure, or a column of them


@dataclass(frozen=True)
class SelfHostedPricing:
    gpu_hour_usd: float
    usd_per_kwh: float
    pue: float
    storage_usd_per_tb_month: dict[str, float]

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> SelfHostedPricing:
        try:
            return cls(float(cfg["gpu_hour_usd"]), float(cfg["usd_per_kwh"]), float(cfg["pue"]),
                       {k: float(v) for k, v in cfg["storage_usd_per_tb_month"].items()})
        except KeyError as exc:
            raise ConfigError(f"pricing.self_hosted: '{exc.args[0]}' is missing") from None

    def gpu_cost(self, gpu_s: Seconds, power_w: float) -> Seconds:
        """GPU time at the hourly rate plus its energy at the facility's PUE."""
        hours = gpu_s / 3600.0
        return hours * self.gpu_hour_usd + hours * power_w / 1000.0 * self.pue * self.usd_per_kwh

    def storage_cost(self, tier: str, byte_seconds: float) -> float:
        """Capacity cost of holding KV: bytes x time x $/TB-month."""
        return byte_seconds / 1e12 / SECONDS_PER_MONTH * self.storage_usd_per_tb_month.get(tier, 0.0)
