"""Figures that say whether a run was under load, and how sure its per-session figures are.

From the requests table (one row per finished call):

- end-to-end latency (send to last token) with its no-reuse baseline;
- served throughput: the tokens the deployment actually finished per second of the run's span
  (first send to last finish). Not the offered load: a saturated run serves less than it is
  offered, and a lightly loaded one serves exactly what it is offered;
- a saturation warning. Rule: take the calls in send order; if the median queue time (send to
  engine start) of the last ``fraction`` of them exceeds both ``ratio`` x the median of the
  first ``fraction`` and ``min_queue_s``, the queue grew through the run: the deployment is
  saturated and latency figures describe the backlog, not the engine;
- $ per session: its p50 and p90 over sessions (API bill, and busy self-hosted cost);
- percentile bootstrap confidence intervals over sessions (sessions resampled with replacement,
  ``resamples`` times, from a seeded numpy Generator) for the token-weighted reuse and the mean
  $ per session.

Options come from the ``load`` section of conf/config.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from engines.specs import ConfigError
from replay.cost import span_s

# the bootstrap draws resamples in chunks of at most this many session indices (memory bound)
_CHUNK_INDICES = 2_000_000


@dataclass(frozen=True)
class LoadOptions:
    fraction: float = 0.2
    ratio: float = 2.0
    min_queue_s: float = 1.0
    resamples: int = 1000
    level: float = 0.95

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> LoadOptions:
        """From the ``load`` config section; a bad value is one ConfigError line naming its key."""
        cfg = cfg or {}
        sat, boot = cfg.get("saturation") or {}, cfg.get("bootstrap") or {}
        try:
            opts = cls(fraction=float(sat.get("fraction", cls.fraction)),
                       ratio=float(sat.get("ratio", cls.ratio)),
                       min_queue_s=float(sat.get("min_queue_s", cls.min_queue_s)),
                       resamples=int(boot.get("resamples", cls.resamples)),
                       level=float(boot.get("level", cls.level)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"load: {exc}") from None
        checks = [("load.saturation.fraction", 0 < opts.fraction <= 0.5, "in (0, 0.5]"),
                  ("load.saturation.ratio", opts.ratio >= 1, ">= 1"),
                  ("load.saturation.min_queue_s", opts.min_queue_s >= 0, ">= 0"),
                  ("load.bootstrap.resamples", opts.resamples >= 1, ">= 1"),
                  ("load.bootstrap.level", 0 < opts.level < 1, "in (0, 1)")]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{key} must be {rule}")
        return opts


def _pct(values: pl.Series, qs: Mapping[str, float]) -> dict[str, float | None]:
    values = values.drop_nulls()
    return {k: (float(values.quantile(q, "linear")) if values.len() else None) for k, q in qs.items()}


P50_P90_P99 = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
P50_P90 = {"p50": 0.5, "p90": 0.9}


def served_throughput(df: pl.DataFrame, prefix: str = "") -> dict[str, float | None]:
    """Calls, output tokens and all tokens (input + output) finished per second of the span of
    one simulation (``prefix``: "" or "no_reuse_")."""
    if df.height == 0 or df[f"{prefix}finish_s"].null_count() == df.height:
        return dict.fromkeys(("calls_per_s", "output_tokens_per_s", "total_tokens_per_s"))
    span = span_s(df[f"{prefix}arrival_s"], df[f"{prefix}finish_s"])
    output = float(df["output_tokens"].sum())
    total = output + float(df["input_tokens"].sum())
    per = (lambda x: x / span) if span > 0 else (lambda x: None)  # noqa: E731
    return {"calls_per_s": per(df.height), "output_tokens_per_s": per(output),
            "total_tokens_per_s": per(total)}


def saturation(df: pl.DataFrame, opts: LoadOptions) -> dict[str, Any]:
    """The queue-growth rule of the module docstring; ``saturated`` is None under 2 calls."""
    ordered = df.sort("arrival_s", "request_id")["queue_s"]
    n = ordered.len()
    k = max(1, round(n * opts.fraction))
    if n < 2:
        return {"first_queue_s": None, "last_queue_s": None, "saturated": None}
    first, last = float(ordered.head(k).median()), float(ordered.tail(k).median())
    return {"first_queue_s": first, "last_queue_s": last,
            "saturated": bool(last > opts.ratio * first and last > opts.min_queue_s)}


def _per_session(df: pl.DataFrame) -> pl.DataFrame:
    return df.group_by("session_id").agg(
        pl.col("input_tokens").sum().cast(pl.Float64).alias("input"),
        pl.col("reused_tokens").sum().cast(pl.Float64).alias("reused"),
        pl.col("api_cost_usd").sum().alias("api"),
        pl.col("api_no_reuse_cost_usd").sum().alias("no_reuse_api"),
        pl.col("cost_usd").sum().alias("busy"),
        pl.col("no_reuse_cost_usd").sum().alias("no_reuse_busy"),
    ).sort("session_id")


def bootstrap(per_session: pl.DataFrame, opts: LoadOptions, rng: np.random.Generator
              ) -> dict[str, list[float] | None]:
    """Percentile intervals at ``opts.level`` for reuse (sum reused / sum input of the resampled
    sessions) and the mean API and busy self-hosted $ per session."""
    s = per_session.height
    names = ("reuse", "api_usd_per_session", "self_hosted_busy_usd_per_session")
    if s == 0:
        return dict.fromkeys(names)
    inp, reused = per_session["input"].to_numpy(), per_session["reused"].to_numpy()
    api, busy = per_session["api"].to_numpy(), per_session["busy"].to_numpy()
    draws: dict[str, list[np.ndarray]] = {n: [] for n in names}
    chunk = max(1, _CHUNK_INDICES // s)
    for start in range(0, opts.resamples, chunk):
        idx = rng.integers(0, s, size=(min(chunk, opts.resamples - start), s))
        total_in = inp[idx].sum(axis=1)
        draws["reuse"].append(np.divide(reused[idx].sum(axis=1), total_in,
                                        out=np.zeros(len(idx)), where=total_in > 0))
        draws["api_usd_per_session"].append(api[idx].mean(axis=1))
        draws["self_hosted_busy_usd_per_session"].append(busy[idx].mean(axis=1))
    tail = (1 - opts.level) / 2
    return {n: [float(v) for v in np.quantile(np.concatenate(d), [tail, 1 - tail])]
            for n, d in draws.items()}


def load_figures(requests: pl.DataFrame, opts: LoadOptions, rng: np.random.Generator) -> dict[str, Any]:
    """The summary keys of this module, for ``summary.update``."""
    df = requests
    e2e = df["finish_s"] - df["arrival_s"]
    no_reuse_e2e = df["no_reuse_finish_s"] - df["no_reuse_arrival_s"]
    sessions = _per_session(df)
    served, base_served = served_throughput(df), served_throughput(df, "no_reuse_")
    has_baseline = df.height > 0 and df["no_reuse_cost_usd"].null_count() == 0
    names = ("api", "busy", "no_reuse_api", "no_reuse_busy") if has_baseline else ("api", "busy")
    session_usd = {name: _pct(sessions[name], P50_P90) for name in names}
    return {
        "e2e_s": _pct(e2e, P50_P90_P99),
        "no_reuse_e2e_s": _pct(no_reuse_e2e, P50_P90_P99),
        **{f"served_{k}": v for k, v in served.items()},
        **{f"no_reuse_served_{k}": v for k, v in base_served.items()},
        "saturation": {**saturation(df, opts), "fraction": opts.fraction, "ratio": opts.ratio,
                       "min_queue_s": opts.min_queue_s},
        "api_usd_per_session_dist": session_usd["api"],
        "no_reuse_api_usd_per_session_dist": session_usd.get("no_reuse_api"),
        "self_hosted_busy_usd_per_session_dist": session_usd["busy"],
        "no_reuse_self_hosted_busy_usd_per_session_dist": session_usd.get("no_reuse_busy"),
        "ci": {"level": opts.level, "resamples": opts.resamples, **bootstrap(sessions, opts, rng)},
    }


def saturation_warning(summary: Mapping[str, Any]) -> str | None:
    """One line when the queue grew through the run, else None."""
    sat = summary.get("saturation") or {}
    if not sat.get("saturated"):
        return None
    share = round(100 * sat["fraction"])
    return (f"WARNING: saturated: the median queue time grew from {sat['first_queue_s']:,.2f} s (first "
            f"{share}% of calls) to {sat['last_queue_s']:,.2f} s (last {share}%); latency and "
            "served throughput describe the backlog: lower the load or add instances")
