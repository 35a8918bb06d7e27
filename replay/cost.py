"""Self-hosted cost: of the GPU-seconds the calls kept busy, of every GPU provisioned for the
run's span, and of the KV tiers.

The span of a run is the time from its first call's send (``arrival_s``) to its last call's
finish (``finish_s``), on the replay clock: the GPUs must be there all that time, busy or not.
Busy cost counts only the GPU-seconds the engine booked to calls; it is what the run would cost
if idle GPU time were free (a perfectly packed, elastic fleet), so it is a lower bound. KV
storage likewise: the busy figure pays for the KV each tier held over time; the provisioned
figure pays for each tier bought with the deployment (host DRAM, local NVMe) whole, every
instance's, for the span, and for a tier billed on use (``storage_billing: held``: a shared,
managed store) what it held.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

from engines.specs import ConfigError

SECONDS_PER_MONTH = 30.44 * 86_400
STORAGE_BILLING = ("capacity", "held")  # what a tier's $/TB-month is paid on, in the provisioned cost
Seconds = TypeVar("Seconds", float, pl.Expr)  # one call's figure, or a column of them


def span_s(arrival_s: pl.Series, finish_s: pl.Series) -> float:
    """First send to last finish (0 for no calls)."""
    if arrival_s.len() == 0 or arrival_s.null_count() == arrival_s.len():
        return 0.0
    return float(finish_s.max() - arrival_s.min())


@dataclass(frozen=True)
class SelfHostedPricing:
    gpu_hour_usd: float
    usd_per_kwh: float
    pue: float
    storage_usd_per_tb_month: dict[str, float]
    storage_billing: dict[str, str] = field(default_factory=dict)  # per tier; "capacity" if not named

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> SelfHostedPricing:
        try:
            raw = cfg.get("storage_billing") or {}
            if not isinstance(raw, Mapping):
                raise ConfigError("pricing.self_hosted.storage_billing must map tier names to "
                                  f"{' or '.join(STORAGE_BILLING)}, got {raw!r}")
            prices = {str(k): float(v) for k, v in cfg["storage_usd_per_tb_month"].items()}
            billing = {str(k): str(v) for k, v in raw.items()}
            for tier, basis in billing.items():
                if basis not in STORAGE_BILLING:
                    raise ConfigError(f"pricing.self_hosted.storage_billing.{tier} must be one of "
                                      f"{', '.join(STORAGE_BILLING)}, got {basis!r}")
                if tier not in prices:  # a misspelt tier would leave the real one on the default
                    raise ConfigError(f"pricing.self_hosted.storage_billing.{tier}: no tier {tier!r} "
                                      f"in storage_usd_per_tb_month ({', '.join(prices)})")
            return cls(float(cfg["gpu_hour_usd"]), float(cfg["usd_per_kwh"]), float(cfg["pue"]),
                       prices, billing)
        except KeyError as exc:
            raise ConfigError(f"pricing.self_hosted: '{exc.args[0]}' is missing") from None

    def check_priced(self, tiers: Iterable[str]) -> None:
        """Every KV tier of a deployment has a price: one without would be stored for free."""
        for tier in tiers:
            if tier not in self.storage_usd_per_tb_month:
                raise ConfigError(f"cache tier {tier!r} has no price: set pricing.self_hosted."
                                  f"storage_usd_per_tb_month.{tier} (priced: "
                                  f"{', '.join(self.storage_usd_per_tb_month)})")

    def gpu_cost(self, gpu_s: Seconds, power_w: float) -> Seconds:
        """GPU time at the hourly rate plus its energy at the facility's PUE."""
        hours = gpu_s / 3600.0
        return hours * self.gpu_hour_usd + hours * power_w / 1000.0 * self.pue * self.usd_per_kwh

    def provisioned_cost(self, gpus: int, span_s: float, busy_gpu_s: float, power_w: float) -> float:
        """Every provisioned GPU for the whole span at the hourly rate, plus energy at the
        measured utilisation (power x busy GPU-seconds x PUE; idle draw is not counted)."""
        return (gpus * span_s / 3600.0 * self.gpu_hour_usd
                + busy_gpu_s / 3600.0 * power_w / 1000.0 * self.pue * self.usd_per_kwh)

    def storage_cost(self, tier: str, byte_seconds: float) -> float:
        """Cost of storage: bytes x time x $/TB-month."""
        return byte_seconds / 1e12 / SECONDS_PER_MONTH * self.storage_usd_per_tb_month.get(tier, 0.0)

    def provisioned_storage_cost(self, capacity_bytes: Mapping[str, float | None], span_s: float,
                                 held_usd: Mapping[str, float]) -> dict[str, float]:
        """Per tier, the KV storage a deployment pays for over ``span_s``: a tier billed on
        capacity (the default) costs its whole capacity (``capacity_bytes``: all instances', a
        shared tier once) for the span, full or not; a tier billed on what it holds, or one with
        no capacity to buy (unbounded: None, or not reported), costs ``held_usd``."""
        out = dict(held_usd)
        for tier, capacity in capacity_bytes.items():
            if capacity is not None and self.storage_billing.get(tier, "capacity") == "capacity":
                out[tier] = self.storage_cost(tier, capacity * span_s)
            else:
                out.setdefault(tier, 0.0)  # held nothing (or nothing reported): every tier listed
        return out
