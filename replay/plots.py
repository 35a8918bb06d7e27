"""The pictures of one run, written beside requests.parquet: TTFT CDF with and without reuse,
reuse by turn, tier occupancy and link utilisation (offload engine), and the cost breakdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from replay.atomic import write_atomic  # noqa: E402

DPI = 110


def title_of(summary: dict[str, Any]) -> str:
    return (f"{summary.get('trace')} on {summary.get('engine')}: {summary.get('model')} / "
            f"{summary.get('hardware')} x{summary.get('tp')} / cache {summary.get('cache')}")


def save_figure(fig, path: Path) -> Path:
    """Lay out, write atomically (PNG) and close a figure."""
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    plt.close(fig)
    return path


def ttft_cdf(requests: pl.DataFrame, summary: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for column, label in (("ttft_s", "with reuse"), ("no_reuse_ttft_s", "no reuse (simulated)")):
        values = np.sort(requests[column].drop_nulls().to_numpy())
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (s, log scale)")
    ax.set_ylabel("share of calls")
    ax.set_title(f"TTFT distribution\n{title_of(summary)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def reuse_by_turn(requests: pl.DataFrame, summary: dict[str, Any], tiers: list[str], path: Path) -> Path:
    edges = [0, 1, 2, 5, 10, 20, 50, 100, 200, 10**9]
    labels = ["0", "1", "2-4", "5-9", "10-19", "20-49", "50-99", "100-199", "200+"]
    index = np.searchsorted(np.array(edges[1:-1]), requests["turn"].to_numpy(), side="right")
    df = requests.with_columns(bucket=pl.Series([labels[i] for i in index], dtype=pl.String))
    agg = df.group_by("bucket").agg(
        pl.col("input_tokens").sum(), *[pl.col(f"reused_tokens_{t}").sum() for t in tiers])
    agg = agg.with_columns(pl.col("bucket").cast(pl.String)).filter(pl.col("input_tokens") > 0)
    order = [b for b in labels if b in set(agg["bucket"])]
    agg = agg.with_columns(pl.col("bucket").replace_strict({b: i for i, b in enumerate(order)},
                                                          return_dtype=pl.Int32).alias("i")).sort("i")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = np.zeros(agg.height)
    x = np.arange(len(order))
    for t in tiers:
        share = (agg[f"reused_tokens_{t}"] / agg["input_tokens"]).to_numpy()
        ax.bar(x, share, bottom=bottom, label=f"from {t}")
        bottom += share
    ax.set_xticks(x, order)
    ax.set_ylim(0, 1)
    ax.set_xlabel("turn index within the session")
    ax.set_ylabel("share of input tokens reused")
    ax.set_title(f"Reuse by turn\n{title_of(summary)}", fontsize=9)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def tiers_over_time(timeline: pl.DataFrame, summary: dict[str, Any], path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    t = timeline["time_s"].to_numpy() / 60
    for col in [c for c in timeline.columns if c.endswith("_bytes")]:
        top.plot(t, timeline[col].to_numpy() / 1e9, label=col.removesuffix("_bytes"))
    top.set_ylabel("KV held (GB)")
    top.set_title(f"Tier occupancy and link utilisation\n{title_of(summary)}", fontsize=9)
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    for col in [c for c in timeline.columns if c.endswith("_util")]:
        bottom.plot(t, timeline[col].to_numpy(), label=col.removesuffix("_util"))
    bottom.set_ylabel("link busy share")
    bottom.set_xlabel("replay time (min)")
    bottom.set_ylim(0, 1.05)
    if any(c.endswith("_util") for c in timeline.columns):
        bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    return save_figure(fig, path)


def cost_breakdown(requests: pl.DataFrame, summary: dict[str, Any], gpu_hour_usd: float,
                   tp: int, path: Path) -> Path:
    """$ per session: self-hosted busy (compute, waiting on loads, storage) and provisioned,
    each beside its simulated no-reuse baseline where there is one, and the API bill."""
    sessions = max(summary["sessions"], 1)
    per = lambda key: (summary.get(key) or 0.0) / sessions  # noqa: E731
    storage = sum(summary.get("storage_usd_by_tier", {}).values()) / sessions
    loads = float(requests["load_s"].fill_null(0).sum()) * tp / 3600 * gpu_hour_usd / sessions
    compute = float(requests["cost_usd"].sum()) / sessions
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    ax.bar("busy GPU-s\nwith reuse", compute, color="C0", label="GPU compute")
    ax.bar("busy GPU-s\nwith reuse", loads, bottom=compute, color="C1", label="GPU waiting on loads")
    ax.bar("busy GPU-s\nwith reuse", storage, bottom=compute + loads, color="C2", label="KV storage")

    def provisioned(prefix: str, name: str, **label: str) -> None:
        """The provisioned bar: GPUs for the span, under the KV tiers bought."""
        tiers = summary.get(f"{prefix}provisioned_storage_usd_by_tier") or {}
        tiers_bought = sum(tiers.values()) / sessions
        gpus_bought = per(f"{prefix}self_hosted_provisioned_usd") - tiers_bought
        ax.bar(name, gpus_bought, color="C4", **label)
        ax.bar(name, tiers_bought, bottom=gpus_bought, color="C2")

    provisioned("", "provisioned\nwith reuse", label="provisioned GPUs for the span")
    if summary.get("baseline") == "simulate":
        ax.bar("busy GPU-s\nno reuse", per("no_reuse_self_hosted_busy_usd"), color="C0")
        provisioned("no_reuse_", "provisioned\nno reuse")
    ax.bar("API\nwith cache", per("api_usd"), color="C3", label=f"API bill ({summary.get('pricing')})")
    ax.bar("API\nno cache", per("no_reuse_api_usd"), color="C3")
    ax.set_ylabel("$ per session")
    ax.set_title(f"Cost per session (no reuse: a simulation with prefix reuse off)\n{title_of(summary)}",
                 fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def run_plots(run_dir: Path, summary: dict[str, Any], tiers: list[str], gpu_hour_usd: float) -> list[Path]:
    """Every plot of a run; returns the files written."""
    requests = pl.read_parquet(run_dir / "requests.parquet")
    if requests.is_empty():
        return []
    out = [ttft_cdf(requests, summary, run_dir / "ttft_cdf.png"),
           reuse_by_turn(requests, summary, tiers, run_dir / "reuse_by_turn.png"),
           cost_breakdown(requests, summary, gpu_hour_usd, int(summary.get("tp", 1)), run_dir / "cost.png")]
    if (run_dir / "timeline.parquet").exists():
        out.append(tiers_over_time(pl.read_parquet(run_dir / "timeline.parquet"), summary,
                                   run_dir / "tiers.png"))
    return out
