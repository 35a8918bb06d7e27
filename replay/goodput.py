"""Goodput: how much of a run met its latency SLO (``slo:`` in the config).

A call meets the SLO when its TTFT is within ``slo.ttft_s`` and its TPOT within ``slo.tpot_s``
(a call with one output token has no TPOT and passes that half). A session meets it when every
measured call of it does. The run meets it when the ``slo.percentile``-th percentile of TTFT and
of TPOT over the measured calls are within the thresholds (``percentile: 100``: every call).

Measured calls: by default all of them. For steady-state figures (``replay-plan``), the first
``slo.warmup_fraction`` of the session-arrival span is warm-up (the system starts empty) and,
with ``slo.exclude_drain``, calls sent after the last session started are left out too (load
falls as sessions end). Rates are over the same window: sessions started in it and tokens of
its calls, per second of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from engines.specs import ConfigError, check_keys


@dataclass(frozen=True)
class Slo:
    ttft_s: float | None = None
    tpot_s: float | None = None
    percentile: float = 99.0
    warmup_fraction: float = 0.0
    exclude_drain: bool = False

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> Slo | None:
        """The ``slo:`` block, checked (None: no SLO configured)."""
        if not cfg:
            return None
        check_keys(cfg, tuple(cls.__dataclass_fields__), "slo")

        def num(key: str, default: float | None) -> float | None:
            value = cfg.get(key, default)
            if value is None:
                return None
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"slo.{key} must be a number, got {value!r}") from None
            if not math.isfinite(value):
                raise ConfigError(f"slo.{key} must be finite, got {value}")
            return value

        slo = cls(num("ttft_s", None), num("tpot_s", None), num("percentile", 99.0),
                  num("warmup_fraction", 0.0), bool(cfg.get("exclude_drain", False)))
        for key in ("ttft_s", "tpot_s"):
            v = getattr(slo, key)
            if v is not None and not v > 0:
                raise ConfigError(f"slo.{key} must be > 0 (or null: no limit), got {v}")
        if not 0 < slo.percentile <= 100:
            raise ConfigError(f"slo.percentile must be in (0, 100], got {slo.percentile}")
        if not 0 <= slo.warmup_fraction < 1:
            raise ConfigError(f"slo.warmup_fraction must be in [0, 1), got {slo.warmup_fraction}")
        return slo


def window(df: pl.DataFrame, slo: Slo) -> tuple[float, float]:
    """(from, to) on the send clock: the calls sent in it are the measured ones."""
    if df.height == 0:
        return 0.0, 0.0
    t0 = float(df["arrival_s"].min())
    last_start = float(df.group_by("session_id").agg(pl.col("arrival_s").min())["arrival_s"].max())
    start = t0 + slo.warmup_fraction * (last_start - t0)
    end = last_start if slo.exclude_drain else float(df["finish_s"].max())
    return start, end


def measured(df: pl.DataFrame, slo: Slo) -> pl.DataFrame:
    """The calls the SLO figures are about, with ``slo_met`` per call."""
    start, end = window(df, slo)
    ok = pl.lit(True)
    if slo.ttft_s is not None:
        ok = ok & (pl.col("ttft_s") <= slo.ttft_s)
    if slo.tpot_s is not None:
        ok = ok & (pl.col("tpot_s").is_null() | (pl.col("tpot_s") <= slo.tpot_s))
    return (df.filter(pl.col("arrival_s").is_between(start, end))
              .with_columns(slo_met=ok.fill_null(False)))


def _quantile(series: pl.Series, percentile: float) -> float | None:
    series = series.drop_nulls()
    return float(series.quantile(percentile / 100.0, "linear")) if series.len() else None


def goodput(df: pl.DataFrame, slo: Slo) -> dict[str, Any]:
    """The SLO figures of a run's requests table (one row per finished call)."""
    start, end = window(df, slo)
    m = measured(df, slo)
    sessions = m.group_by("session_id").agg(pl.col("slo_met").all())
    ttft = _quantile(m["ttft_s"], slo.percentile)
    tpot = _quantile(m.filter(pl.col("output_tokens") > 1)["tpot_s"], slo.percentile)
    failed = []
    if m.height == 0:
        failed.append("no calls measured")
    if slo.ttft_s is not None and ttft is not None and ttft > slo.ttft_s:
        failed.append("ttft")
    if slo.tpot_s is not None and tpot is not None and tpot > slo.tpot_s:
        failed.append("tpot")
    length = end - start
    first = df.group_by("session_id").agg(pl.col("arrival_s").min().alias("first_s"))
    started = sessions.join(first, on="session_id").filter(  # sessions that began in the window
        pl.col("first_s").is_between(start, end))
    per_s = (lambda x: x / length) if length > 0 else (lambda x: None)  # noqa: E731
    return {
        "ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "percentile": slo.percentile,
        "window_s": [start, end],
        "calls": m.height,
        "sessions": sessions.height,
        "calls_met_share": float(m["slo_met"].mean()) if m.height else None,
        "sessions_met_share": float(sessions["slo_met"].mean()) if sessions.height else None,
        "ttft_at_percentile_s": ttft,
        "tpot_at_percentile_s": tpot,
        "achieved_sessions_per_s": per_s(started.height),
        "goodput_sessions_per_s": per_s(int(started["slo_met"].sum())),
        "tokens_per_s": per_s(int(m["input_tokens"].sum() + m["output_tokens"].sum())),
        "output_tokens_per_s": per_s(int(m["output_tokens"].sum())),
        "met": not failed,
        "failed_on": failed,
    }


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def goodput_rows(g: dict[str, Any] | None, fmt) -> list[tuple[str, str, str, str]]:
    """Lines for the printed summary table (``fmt``: the table's value formatter)."""
    if not g:
        return []
    p = f"p{g['percentile']:g}"
    limits = f"TTFT {p} <= {fmt(g['ttft_s'], 's')}, TPOT {p} <= {fmt(g['tpot_s'], 's')}"
    verdict = "met" if g["met"] else "missed (" + ", ".join(g["failed_on"]) + ")"
    return [
        (f"SLO ({limits})", verdict, "", ""),
        ("  calls / sessions meeting it", f"{fmt(g['calls_met_share'], '%')} / "
                                          f"{fmt(g['sessions_met_share'], '%')}", "", ""),
        ("  sessions/s achieved (meeting SLO)", f"{_g(g['achieved_sessions_per_s'])} "
                                                f"({_g(g['goodput_sessions_per_s'])})", "", ""),
        ("  tokens/s (in + out)", fmt(g["tokens_per_s"]), "", ""),
    ]
