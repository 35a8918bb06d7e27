"""summary.json and the printed table: every figure beside its simulated no-reuse baseline.

Self-hosted money is given twice, labelled: ``busy`` counts only the GPU-seconds the calls kept
busy; ``provisioned`` counts every GPU of the deployment (instances x tp) for the run's span
(first send to last finish), as a bill would. The baseline is a second simulation with prefix
reuse off (``no_reuse_*`` columns); with ``replay.baseline=off`` its figures and the savings
are None.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from replay.atomic import write_text
from replay.cost import SelfHostedPricing, span_s
from replay.goodput import Slo, goodput, goodput_rows
from replay.load import saturation_warning

PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _pct(series: pl.Series) -> dict[str, float | None]:
    series = series.drop_nulls()
    if series.len() == 0:
        return {k: None for k in PERCENTILES}
    return {k: float(series.quantile(q, "linear")) for k, q in PERCENTILES.items()}


def _saving(with_reuse: float | None, baseline: float | None) -> float | None:
    return None if with_reuse is None or not baseline else 1.0 - with_reuse / baseline


def _per(value: float | None, n: float) -> float | None:
    return None if value is None or not n else value / n


def _self_hosted(df: pl.DataFrame, prefix: str, held_usd: dict[str, float], capacity_bytes: dict[str, float],
                 pricing: SelfHostedPricing, gpus: int, power_w: float) -> dict[str, Any]:
    """Busy and provisioned cost of one simulation (``prefix``: "" or "no_reuse_"): busy pays
    for the KV the tiers held (``held_usd``), provisioned for the tiers bought (see
    ``SelfHostedPricing.provisioned_storage_cost``)."""
    span = span_s(df[f"{prefix}arrival_s"], df[f"{prefix}finish_s"])
    busy_gpu_s = float(df[f"{prefix}gpu_s"].sum())
    provisioned_gpu_s = gpus * span
    storage = pricing.provisioned_storage_cost(capacity_bytes, span, held_usd)
    return {
        "span_s": span,
        "gpu_s": busy_gpu_s,
        "provisioned_gpu_s": provisioned_gpu_s,
        "gpu_utilisation": busy_gpu_s / provisioned_gpu_s if provisioned_gpu_s else None,
        "busy_usd": float(df[f"{prefix}cost_usd"].sum()) + float(sum(held_usd.values())),
        "provisioned_usd": (pricing.provisioned_cost(gpus, span, busy_gpu_s, power_w)
                            + float(sum(storage.values()))),
        "provisioned_storage_usd_by_tier": storage,
    }


def _cost_figures(kind: str, me: dict[str, Any], base: dict[str, Any], sessions: int,
                 mtok: float) -> dict[str, float | None]:
    """One self-hosted cost (``busy`` or ``provisioned``) in total, per session and per million
    tokens, beside the no-reuse baseline's, and the saving."""
    ours, theirs = me[f"{kind}_usd"], base[f"{kind}_usd"]
    figures = {}
    for suffix, divisor in (("", 1), ("_per_session", sessions), ("_per_mtok", mtok)):
        figures[f"self_hosted_{kind}_usd{suffix}"] = _per(ours, divisor)
        figures[f"no_reuse_self_hosted_{kind}_usd{suffix}"] = _per(theirs, divisor)
    figures[f"self_hosted_{kind}_saving"] = _saving(ours, theirs)
    return figures


def summarize(requests: pl.DataFrame, tier_names: list[str], self_hosted: SelfHostedPricing, gpus: int,
              power_w: float, storage_usd: dict[str, float] | None = None,
              no_reuse_storage_usd: dict[str, float] | None = None, slo: Slo | None = None,
              capacity_bytes_by_tier: dict[str, float] | None = None, **context: Any) -> dict[str, Any]:
    """Figures of a run from its requests table (one row per finished call); ``gpus``: the
    deployment's instances x tp; ``storage_usd``: the KV held per tier, priced;
    ``capacity_bytes_by_tier``: the tiers' capacity over the deployment (the baseline runs on
    the same); the baseline's figures where its columns are filled; goodput against ``slo``
    (replay/goodput.py) when one is given."""
    storage_usd = storage_usd or {}
    capacity = capacity_bytes_by_tier or {}
    df = requests
    calls = df.height
    sessions = df["session_id"].n_unique()
    input_tokens = int(df["input_tokens"].sum())
    output_tokens = int(df["output_tokens"].sum())
    mtok = (input_tokens + output_tokens) / 1e6
    reused = int(df["reused_tokens"].sum())
    has_baseline = calls > 0 and df["no_reuse_gpu_s"].null_count() == 0
    me = _self_hosted(df, "", storage_usd, capacity, self_hosted, gpus, power_w)
    base: dict[str, Any] = dict.fromkeys(me)
    if has_baseline:
        base = _self_hosted(df, "no_reuse_", no_reuse_storage_usd or {}, capacity, self_hosted, gpus, power_w)
    api_usd, base_api_usd = float(df["api_cost_usd"].sum()), float(df["api_no_reuse_cost_usd"].sum())
    decoding = df.filter(pl.col("output_tokens") > 1)
    reported = df["reported_cached_tokens"].drop_nulls()
    span = me["span_s"]
    summary: dict[str, Any] = {
        **context,
        "baseline": "simulate" if has_baseline else "off",
        "calls": calls,
        "sessions": sessions,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "reuse": reused / input_tokens if input_tokens else 0.0,
        "reuse_by_tier": {t: (int(df[f"reused_tokens_{t}"].sum()) / input_tokens if input_tokens else 0.0)
                          for t in tier_names},
        "prefilled_tokens": int(df["prefilled_tokens"].sum()),
        "recomputed_tokens": int(df["recomputed_tokens"].sum()),
        "no_reuse_prefilled_tokens": int(df["no_reuse_prefilled_tokens"].sum()) if has_baseline else None,
        "loaded_bytes": float(df["loaded_bytes"].sum()),
        "ttft_s": _pct(df["ttft_s"]),
        "no_reuse_ttft_s": _pct(df["no_reuse_ttft_s"]),
        "tpot_s": _pct(decoding["tpot_s"]),
        "no_reuse_tpot_s": _pct(decoding["no_reuse_tpot_s"]),
        "queue_s": _pct(df["queue_s"]),
        "span_s": span,
        "no_reuse_span_s": base["span_s"],
        "gpus": gpus,
        "gpu_s": me["gpu_s"],
        "no_reuse_gpu_s": base["gpu_s"],
        "gpu_s_saving": _saving(me["gpu_s"], base["gpu_s"]),
        "provisioned_gpu_s": me["provisioned_gpu_s"],
        "no_reuse_provisioned_gpu_s": base["provisioned_gpu_s"],
        "gpu_utilisation": me["gpu_utilisation"],
        "no_reuse_gpu_utilisation": base["gpu_utilisation"],
        "storage_usd_by_tier": storage_usd,
        "provisioned_storage_usd_by_tier": me["provisioned_storage_usd_by_tier"],
        "no_reuse_provisioned_storage_usd_by_tier": base["provisioned_storage_usd_by_tier"],
        "capacity_bytes_by_tier": capacity,
        **_cost_figures("busy", me, base, sessions, mtok),
        **_cost_figures("provisioned", me, base, sessions, mtok),
        "api_cached_tokens": int(df["api_cached_tokens"].sum()),
        "api_cache_write_tokens": int(df["api_cache_write_tokens"].sum()),
        "api_usd": api_usd,
        "no_reuse_api_usd": base_api_usd,
        "api_usd_per_session": _per(api_usd, sessions),
        "no_reuse_api_usd_per_session": _per(base_api_usd, sessions),
        "api_saving": _saving(api_usd, base_api_usd),
        "goodput": goodput(df, slo) if slo is not None else None,
    }
    if reported.len():
        recorded = df.filter(pl.col("reported_cached_tokens").is_not_null())
        summary["reported_cached_tokens"] = int(reported.sum())
        summary["simulated_cached_tokens_where_reported"] = int(recorded["api_cached_tokens"].sum())
        summary["reported_api_usd"] = float(recorded["reported_api_cost_usd"].fill_null(0).sum())
        summary["simulated_api_usd_where_reported"] = float(recorded["api_cost_usd"].sum())
    return summary


def write_summary(summary: dict[str, Any], path: Path) -> None:
    write_text(path, json.dumps(summary, indent=2, sort_keys=False) + "\n")


def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "%":
        return f"{100 * v:.1f}%"
    if unit == "$":
        return f"${v:,.4f}" if abs(v) < 1 else f"${v:,.2f}"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if abs(v) < 1 else f"{v:,.2f} s"
    if isinstance(v, float):  # small figures (a throughput of 0.04 tokens/s) keep 3 digits
        return f"{v:,.1f}" if abs(v) >= 10 or v == 0 else f"{v:.3g}"
    return f"{v:,}"


def table(summary: dict[str, Any]) -> str:
    """A readable table: figure, with reuse, simulated no-reuse baseline, saving."""
    s = summary
    rows: list[tuple[str, str, str, str]] = []

    def line(label: str, key: str, unit: str = "", saving: str | None = None) -> None:
        a, b = s.get(key), s.get(f"no_reuse_{key}")
        if saving is not None:
            save = _f(s.get(saving), "%")
        else:
            save = _f(1 - a / b, "%") if a is not None and b else "-"
        rows.append((label, _f(a, unit), _f(b, unit), save))

    rows.append(("calls / sessions", f"{s['calls']:,} / {s['sessions']:,}", "", ""))
    rows.append(("reuse (token-weighted)", _f(s["reuse"], "%"), "0.0%", ""))
    ci = (s.get("ci") or {}).get("reuse")
    if ci:
        rows.append((f"  {_level(s)} CI over sessions", f"{_f(ci[0], '%')} - {_f(ci[1], '%')}", "", ""))
    for tier, share in s["reuse_by_tier"].items():
        rows.append((f"  from {tier}", _f(share, "%"), "", ""))
    line("prefilled tokens", "prefilled_tokens")
    for p in ("p50", "p90", "p99"):
        a, b = s["ttft_s"][p], s["no_reuse_ttft_s"][p]
        rows.append((f"TTFT {p}", _f(a, "s"), _f(b, "s"), _f(1 - a / b, "%") if a is not None and b else "-"))
    for p in ("p50", "p99"):
        a, b = s["tpot_s"][p], s["no_reuse_tpot_s"][p]
        rows.append((f"TPOT {p}", _f(a, "s"), _f(b, "s"), ""))
    _load_rows(s, rows, line)
    line("span (first send to last finish)", "span_s", "s", saving="")
    line("GPU-seconds (busy)", "gpu_s", saving="gpu_s_saving")
    line(f"GPU-seconds (provisioned, {s['gpus']} GPUs)", "provisioned_gpu_s")
    line("GPU utilisation (busy / provisioned)", "gpu_utilisation", "%", saving="")
    _pool_rows(s, rows)
    line("self-hosted $ / session (provisioned)", "self_hosted_provisioned_usd_per_session", "$",
         saving="self_hosted_provisioned_saving")
    line("self-hosted $ / session (busy GPU-s only)", "self_hosted_busy_usd_per_session", "$",
         saving="self_hosted_busy_saving")
    _spread_rows(s, rows, "self_hosted_busy_usd_per_session", "  busy $ / session")
    line("self-hosted $ / M tokens (provisioned)", "self_hosted_provisioned_usd_per_mtok", "$")
    line("self-hosted $ / M tokens (busy GPU-s only)", "self_hosted_busy_usd_per_mtok", "$")
    line("API $ / session", "api_usd_per_session", "$", saving="api_saving")
    _spread_rows(s, rows, "api_usd_per_session", "  API $ / session")
    line("API bill", "api_usd", "$", saving="")
    _reported_rows(s, rows)
    rows += goodput_rows(s.get("goodput"), _f)
    simulated = s.get("baseline") == "simulate"
    header = ("", "with reuse", "no reuse (simulated)" if simulated else "no reuse (off)", "saving")
    lines = [header, *rows]
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    out = []
    for k, row in enumerate(lines):
        out.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    warning = saturation_warning(s)
    return "\n".join(out + ([warning] if warning else []))


def _pool_rows(s: dict[str, Any], rows: list[tuple[str, str, str, str]]) -> None:
    """deployment=pd: each pool's GPUs, utilisation and provisioned cost; the TTFT split."""
    pools = s.get("pools")
    if not pools:
        return
    for name in ("prefill", "decode"):
        p = pools[name]
        rows.append((f"  {name} pool: {p['count']} x {p['tp']} {p['hardware']}",
                     f"{_f(p['gpu_utilisation'], '%')} busy, {_f(p['provisioned_usd'], '$')} for its GPUs",
                     "", ""))
    mean = pools["ttft_split_mean_s"]
    rows.append(("TTFT mean: queue / prefill / decode queue", " / ".join(
        _f(mean[k], "s") for k in ("queue", "prefill", "decode_queue")), "", ""))
    rows.append(("  / KV transfer / first decode step", " / ".join(
        _f(mean[k], "s") for k in ("transfer", "first_step")), "", ""))
    per_call = pools["transfer_bytes_per_call"]
    rows.append(("KV moved between the pools per call", f"{_f(per_call and per_call / 1e9)} GB", "", ""))


def _level(s: dict[str, Any]) -> str:
    return f"{100 * s['ci']['level']:g}%"


def _load_rows(s: dict[str, Any], rows: list[tuple[str, str, str, str]], line: Any) -> None:
    """Queue time, end-to-end latency and served throughput (replay/load.py's figures)."""
    queue = s.get("queue_s") or {}
    for p in ("p50", "p99"):
        rows.append((f"queue time {p} (send to start)", _f(queue.get(p), "s"), "", ""))
    if "e2e_s" not in s:
        return
    for p in ("p50", "p99"):
        a, b = s["e2e_s"][p], (s.get("no_reuse_e2e_s") or {}).get(p)
        rows.append((f"end-to-end {p} (send to last token)", _f(a, "s"), _f(b, "s"),
                     _f(1 - a / b, "%") if a is not None and b else "-"))
    line("served output tokens/s (over the span)", "served_output_tokens_per_s", saving="")
    line("served tokens/s, input + output", "served_total_tokens_per_s", saving="")


def _spread_rows(s: dict[str, Any], rows: list[tuple[str, str, str, str]], key: str, label: str) -> None:
    """p50/p90 over sessions and the bootstrap interval of the mean of a $ per session."""
    dist, base = s.get(f"{key}_dist"), s.get(f"no_reuse_{key}_dist") or {}
    if dist:
        for p in ("p50", "p90"):
            rows.append((f"{label} {p}", _f(dist[p], "$"), _f(base.get(p), "$"), ""))
    ci = (s.get("ci") or {}).get(key)
    if ci:
        rows.append((f"{label}, mean: {_level(s)} CI", f"{_f(ci[0], '$')} - {_f(ci[1], '$')}", "", ""))


def _reported_rows(s: dict[str, Any], rows: list[tuple[str, str, str, str]]) -> None:
    """A recorded trace's own bill (its reported usage at the pricing's rates) beside ours."""
    if "reported_api_usd" not in s:
        return
    rows.append(("API bill of calls with recorded usage", _f(s["simulated_api_usd_where_reported"], "$"),
                 "", ""))
    rows.append(("  as recorded (reported usage)", _f(s["reported_api_usd"], "$"), "", ""))
    cached = f"{s['simulated_cached_tokens_where_reported']:,} / {s['reported_cached_tokens']:,}"
    rows.append(("  cache-read tokens simulated / reported", cached, "", ""))
