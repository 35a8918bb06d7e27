"""summary.json and the printed table: every figure beside its no-reuse baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _pct(series: pl.Series) -> dict[str, float | None]:
    if series.len() == 0:
        return {k: None for k in PERCENTILES}
    return {k: float(series.quantile(q, "linear")) for k, q in PERCENTILES.items()}


def _saving(with_reuse: float, baseline: float) -> float | None:
    return None if not baseline else 1.0 - with_reuse / baseline


def summarize(requests: pl.DataFrame, tier_names: list[str], storage_usd: dict[str, float] | None = None,
              **context: Any) -> dict[str, Any]:
    """Figures of a run from its requests table (one row per finished call)."""
    storage_usd = storage_usd or {}
    df = requests
    calls = df.height
    sessions = df["session_id"].n_unique()
    input_tokens = int(df["input_tokens"].sum())
    output_tokens = int(df["output_tokens"].sum())
    reused = int(df["reused_tokens"].sum())
    makespan = float(df["finish_s"].max() - df["arrival_s"].min()) if calls else 0.0
    gpu_s, base_gpu_s = float(df["gpu_s"].sum()), float(df["no_reuse_gpu_s"].sum())
    storage = float(sum(storage_usd.values()))
    self_usd = float(df["cost_usd"].sum()) + storage
    base_self_usd = float(df["no_reuse_cost_usd"].sum())
    api_usd, base_api_usd = float(df["api_cost_usd"].sum()), float(df["api_no_reuse_cost_usd"].sum())
    mtok = (input_tokens + output_tokens) / 1e6
    decoding = df.filter(pl.col("output_tokens") > 1)
    reported = df["reported_cached_tokens"].drop_nulls()
    summary: dict[str, Any] = {
        **context,
        "calls": calls,
        "sessions": sessions,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "reuse": reused / input_tokens if input_tokens else 0.0,
        "reuse_by_tier": {t: (int(df[f"reused_tokens_{t}"].sum()) / input_tokens if input_tokens else 0.0)
                          for t in tier_names},
        "prefilled_tokens": int(df["prefilled_tokens"].sum()),
        "no_reuse_prefilled_tokens": input_tokens,
        "loaded_bytes": float(df["loaded_bytes"].sum()),
        "ttft_s": _pct(df["ttft_s"]),
        "no_reuse_ttft_s": _pct(df["no_reuse_ttft_s"]),
        "tpot_s": _pct(decoding["tpot_s"]),
        "queue_s": _pct(df["queue_s"]),
        "makespan_s": makespan,
        "throughput_calls_per_s": calls / makespan if makespan > 0 else None,
        "throughput_output_tokens_per_s": output_tokens / makespan if makespan > 0 else None,
        "gpu_s": gpu_s,
        "no_reuse_gpu_s": base_gpu_s,
        "gpu_s_saving": _saving(gpu_s, base_gpu_s),
        "storage_usd_by_tier": storage_usd,
        "self_hosted_usd": self_usd,
        "no_reuse_self_hosted_usd": base_self_usd,
        "self_hosted_usd_per_session": self_usd / sessions if sessions else None,
        "no_reuse_self_hosted_usd_per_session": base_self_usd / sessions if sessions else None,
        "self_hosted_usd_per_mtok": self_usd / mtok if mtok else None,
        "self_hosted_saving": _saving(self_usd, base_self_usd),
        "api_cached_tokens": int(df["api_cached_tokens"].sum()),
        "api_cache_write_tokens": int(df["api_cache_write_tokens"].sum()),
        "api_usd": api_usd,
        "no_reuse_api_usd": base_api_usd,
        "api_usd_per_session": api_usd / sessions if sessions else None,
        "no_reuse_api_usd_per_session": base_api_usd / sessions if sessions else None,
        "api_saving": _saving(api_usd, base_api_usd),
    }
    if reported.len():
        recorded = df.filter(pl.col("reported_cached_tokens").is_not_null())
        summary["reported_cached_tokens"] = int(reported.sum())
        summary["simulated_cached_tokens_where_reported"] = int(recorded["api_cached_tokens"].sum())
        summary["reported_api_usd"] = float(recorded["reported_api_cost_usd"].fill_null(0).sum())
        summary["simulated_api_usd_where_reported"] = float(recorded["api_cost_usd"].sum())
    return summary


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")


def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "%":
        return f"{100 * v:.1f}%"
    if unit == "$":
        return f"${v:,.4f}" if abs(v) < 1 else f"${v:,.2f}"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if abs(v) < 1 else f"{v:,.2f} s"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return f"{v:,}"


def table(summary: dict[str, Any]) -> str:
    """A readable table: figure, with reuse, no-reuse baseline, saving."""
    s = summary
    lines = [("", "with reuse", "no reuse", "saving")]
    lines.append(("calls / sessions", f"{s['calls']:,} / {s['sessions']:,}", "", ""))
    lines.append(("reuse (token-weighted)", _f(s["reuse"], "%"), "0.0%", ""))
    for tier, share in s["reuse_by_tier"].items():
        lines.append((f"  from {tier}", _f(share, "%"), "", ""))
    lines.append(("prefilled tokens", _f(s["prefilled_tokens"]), _f(s["no_reuse_prefilled_tokens"]),
                  _f(1 - s["prefilled_tokens"] / s["no_reuse_prefilled_tokens"], "%")
                  if s["no_reuse_prefilled_tokens"] else "-"))
    for p in ("p50", "p90", "p99"):
        a, b = s["ttft_s"][p], s["no_reuse_ttft_s"][p]
        saving = _f(1 - a / b, "%") if a is not None and b else "-"
        lines.append((f"TTFT {p}", _f(a, "s"), _f(b, "s"), saving))
    for p in ("p50", "p99"):
        lines.append((f"TPOT {p}", _f(s["tpot_s"][p], "s"), "", ""))
    lines.append(("throughput (output tok/s)", _f(s["throughput_output_tokens_per_s"]), "", ""))
    lines.append(("GPU-seconds", _f(s["gpu_s"]), _f(s["no_reuse_gpu_s"]), _f(s["gpu_s_saving"], "%")))
    lines.append(("self-hosted $ / session", _f(s["self_hosted_usd_per_session"], "$"),
                  _f(s["no_reuse_self_hosted_usd_per_session"], "$"), _f(s["self_hosted_saving"], "%")))
    lines.append(("self-hosted $ / M tokens", _f(s["self_hosted_usd_per_mtok"], "$"), "", ""))
    lines.append(("API $ / session", _f(s["api_usd_per_session"], "$"),
                  _f(s["no_reuse_api_usd_per_session"], "$"), _f(s["api_saving"], "%")))
    lines.append(("API bill", _f(s["api_usd"], "$"), _f(s["no_reuse_api_usd"], "$"), ""))
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    out = []
    for k, row in enumerate(lines):
        out.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
