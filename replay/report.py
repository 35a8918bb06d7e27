"""`replay-report DIR...`: compare runs (or every run of multirun sweep folders) in one table
(markdown on the terminal, CSV and Parquet on disk), comparison plots, and a self-contained
HTML report with the images embedded."""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path
from typing import Any

import click
import polars as pl

from replay.atomic import write_atomic, write_text
from replay.plots import plt, save_figure
from replay.server_compare import write_server_comparison
from replay.summary import _f as human
from replay.sweep import FAILED, dotted_get, failed_in, failure_of, markdown, overrides_of, runs_in

COLUMNS = {
    "reuse": "reuse", "reuse_ci_low": "ci.reuse.0", "reuse_ci_high": "ci.reuse.1",
    "ttft_p50_s": "ttft_s.p50", "ttft_p99_s": "ttft_s.p99",
    "no_reuse_ttft_p50_s": "no_reuse_ttft_s.p50", "no_reuse_ttft_p99_s": "no_reuse_ttft_s.p99",
    "queue_p50_s": "queue_s.p50", "queue_p99_s": "queue_s.p99",
    "e2e_p50_s": "e2e_s.p50", "e2e_p99_s": "e2e_s.p99", "saturated": "saturation.saturated",
    "served_output_tokens_per_s": "served_output_tokens_per_s",
    "served_total_tokens_per_s": "served_total_tokens_per_s",
    "gpu_s": "gpu_s", "gpu_utilisation": "gpu_utilisation",
    "self_hosted_provisioned_usd_per_session": "self_hosted_provisioned_usd_per_session",
    "no_reuse_self_hosted_provisioned_usd_per_session": "no_reuse_self_hosted_provisioned_usd_per_session",
    "self_hosted_busy_usd_per_session": "self_hosted_busy_usd_per_session",
    "no_reuse_self_hosted_busy_usd_per_session": "no_reuse_self_hosted_busy_usd_per_session",
    "api_usd_per_session": "api_usd_per_session",
    "api_usd_per_session_p50": "api_usd_per_session_dist.p50",
    "api_usd_per_session_p90": "api_usd_per_session_dist.p90",
    "api_usd_per_session_ci_low": "ci.api_usd_per_session.0",
    "api_usd_per_session_ci_high": "ci.api_usd_per_session.1",
    "no_reuse_api_usd_per_session": "no_reuse_api_usd_per_session",
    "api_usd": "api_usd", "reported_api_usd": "reported_api_usd",
    "calls": "calls", "sessions": "sessions",
}

# The HTML table's column names (CSV and Parquet keep the names above, for code) and units:
# "%" a share, "s" seconds (shown in ms below 1 s), "$" dollars, "" a count or rate. Confidence
# intervals are at the level of load.bootstrap.level (95% by default).
HUMAN = {
    "run": ("run folder", "text"), "label": ("run", "text"), "trace": ("trace", "text"),
    "engine": ("engine", "text"), "model": ("model", "text"), "hardware": ("hardware", "text"),
    "cache": ("cache", "text"), "pricing": ("pricing", "text"),
    "reuse": ("reuse (token-weighted)", "%"), "reuse_ci_low": ("reuse, bootstrap CI low", "%"),
    "reuse_ci_high": ("reuse, bootstrap CI high", "%"),
    "ttft_p50_s": ("TTFT p50", "s"), "ttft_p99_s": ("TTFT p99", "s"),
    "no_reuse_ttft_p50_s": ("TTFT p50 without reuse", "s"),
    "no_reuse_ttft_p99_s": ("TTFT p99 without reuse", "s"),
    "queue_p50_s": ("queue time p50", "s"), "queue_p99_s": ("queue time p99", "s"),
    "e2e_p50_s": ("end-to-end p50", "s"), "e2e_p99_s": ("end-to-end p99", "s"),
    "saturated": ("saturated (queue grew)", "text"),
    "served_output_tokens_per_s": ("served output tokens/s", ""),
    "served_total_tokens_per_s": ("served tokens/s (input + output)", ""),
    "gpu_s": ("busy GPU-seconds", ""), "gpu_utilisation": ("GPU utilisation", "%"),
    "self_hosted_provisioned_usd_per_session": ("self-hosted $/session (provisioned)", "$"),
    "no_reuse_self_hosted_provisioned_usd_per_session":
        ("self-hosted $/session without reuse (provisioned)", "$"),
    "self_hosted_busy_usd_per_session": ("self-hosted $/session (busy GPU-s)", "$"),
    "no_reuse_self_hosted_busy_usd_per_session": ("self-hosted $/session without reuse (busy GPU-s)", "$"),
    "api_usd_per_session": ("API $/session (mean)", "$"),
    "api_usd_per_session_p50": ("API $/session p50", "$"),
    "api_usd_per_session_p90": ("API $/session p90", "$"),
    "api_usd_per_session_ci_low": ("API $/session, bootstrap CI low", "$"),
    "api_usd_per_session_ci_high": ("API $/session, bootstrap CI high", "$"),
    "no_reuse_api_usd_per_session": ("API $/session without cache", "$"),
    "api_usd": ("API bill (simulated)", "$"), "reported_api_usd": ("API bill (as recorded)", "$"),
    "calls": ("calls", ""), "sessions": ("sessions", ""),
}


def human_column(name: str) -> tuple[str, str]:
    """The HTML header and unit of a comparison column (per-tier reuse columns included)."""
    if name in HUMAN:
        return HUMAN[name]
    if name.startswith("reuse_"):
        return f"reuse from {name.removeprefix('reuse_')}", "%"
    return name.replace("_", " "), ""


def human_value(v: Any, unit: str) -> str:
    """A readable cell: 98.6%, 28.2 ms, 2.17 s, $4.62, 7,396.7, yes/no; empty for None."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if unit == "text":
        return str(v)
    return human(v, unit)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (holding summary.json) given directly or inside sweep folders. A failed or
    unfinished run (no summary.json) is skipped with a note on stderr."""
    runs: list[Path] = []
    plans = 0
    for p in paths:
        if not p.exists():
            raise click.ClickException(f"{p}: no such folder")
        if (p / "plan.parquet").exists():  # a replay-plan folder: its own section (replay.plan)
            plans += 1
            continue
        if (p / "summary.json").exists():
            runs.append(p)
            continue
        if (p / FAILED).exists() or (p / ".hydra").exists():
            _skip(p)
            continue
        found, failed = runs_in(p), failed_in(p)
        for run in failed:
            _skip(run)
        if not found and not failed:
            raise click.ClickException(f"{p}: neither a run folder (summary.json) nor a sweep folder")
        runs.extend(found)
    if not runs and not plans:
        raise click.ClickException("no finished run to report (every run given failed or is unfinished)")
    return runs


def _skip(run: Path) -> None:
    reason = f"failed: {failure_of(run)}" if (run / FAILED).exists() else \
        "no summary.json (unfinished, or killed before its end)"
    click.echo(f"note: skipped {run}: {reason}", err=True)


def label_of(run: Path) -> str:
    return overrides_of(run) or run.name


def table(runs: list[Path]) -> pl.DataFrame:
    rows = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        row: dict[str, Any] = {"run": str(run), "label": label_of(run)}
        for name in ("trace", "engine", "model", "hardware", "cache", "pricing"):
            row[name] = summary.get(name)
        for reuse_tier, share in (summary.get("reuse_by_tier") or {}).items():
            row[f"reuse_{reuse_tier}"] = share
        row.update({k: dotted_get(summary, v) for k, v in COLUMNS.items()})
        rows.append(row)
    frame = pl.DataFrame(rows, infer_schema_length=None)
    # a figure no run has (the reported bill of generated traces) is a float column, not Null
    return frame.with_columns(pl.col(pl.Null).cast(pl.Float64))


def comparison_plots(frame: pl.DataFrame, out: Path) -> list[Path]:
    labels = [lbl if len(lbl) < 40 else lbl[:37] + "..." for lbl in frame["label"]]
    specs = [
        ("reuse.png", "Reuse (share of input tokens)", [("reuse", "reuse")]),
        ("ttft.png", "TTFT (s)", [("ttft_p50_s", "p50"), ("ttft_p99_s", "p99"),
                                  ("no_reuse_ttft_p50_s", "p50 without reuse")]),
        ("cost.png", "$ per session", [
            ("self_hosted_provisioned_usd_per_session", "self-hosted (provisioned)"),
                                       ("self_hosted_busy_usd_per_session", "self-hosted (busy GPU-s only)"),
                                       ("no_reuse_self_hosted_provisioned_usd_per_session",
                                        "self-hosted without reuse (provisioned, simulated)"),
                                       ("api_usd_per_session", "API"),
                                       ("no_reuse_api_usd_per_session", "API without cache")]),
    ]
    written = []
    for name, title, series in specs:
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels) + 2), 4.2))
        width = 0.8 / len(series)
        for i, (col, legend) in enumerate(series):
            values = [v if v is not None else 0.0 for v in frame[col].to_list()]
            ax.bar([x + i * width for x in range(len(labels))], values, width=width, label=legend)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels,
                      rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        if name == "ttft.png":
            ax.set_yscale("log")
        written.append(save_figure(fig, out / name))
    return written


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def html_report(frame: pl.DataFrame, plots: list[Path], runs: list[Path], out: Path,
                extra: list[str] | None = None) -> Path:
    """One HTML file that opens with no server: images inlined as base64; ``extra``: sections
    placed first (capacity plans)."""
    columns = [c for c in frame.columns if c != "run"]  # the label names the run; the path is in the CSV
    human_columns = [human_column(c) for c in columns]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in human_columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(human_value(v, unit))}</td>"
                                    for v, (_, unit) in zip(row, human_columns, strict=True)) + "</tr>"
                   for row in frame.select(columns).iter_rows())
    sections = list(extra or [])
    if runs:
        sections += [f"<h2>Comparison</h2><table><tr>{head}</tr>{body}</table>",
                     "<h2>Across runs</h2>" + "".join(_img(p) for p in plots)]
    for run in runs:
        pictures = sorted(run.glob("*.png"))
        if pictures:
            sections.append(f"<h2>{html.escape(label_of(run))}</h2>" + "".join(_img(p) for p in pictures))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>agent-replay report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:48%;margin:4px}</style></head>"
            f"<body><h1>agent-replay report</h1>{''.join(sections)}</body></html>")
    return write_text(out / "report.html", page)


def build(paths: list[Path], out: Path) -> dict[str, Path]:
    from replay.plan import html_section

    runs = find_runs(paths)
    plans = [html_section(p) for p in paths if (p / "plan.parquet").exists()]
    out.mkdir(parents=True, exist_ok=True)
    frame = table(runs)
    write_atomic(out / "comparison.csv", frame.write_csv)
    write_atomic(out / "comparison.parquet", frame.write_parquet)
    plots = comparison_plots(frame, out) if runs else []
    page = html_report(frame, plots, runs, out, plans)
    server = write_server_comparison(runs, out)  # http runs beside simulator runs of the same calls
    return {"csv": out / "comparison.csv", "parquet": out / "comparison.parquet", "html": page,
            "table": frame, "server_vs_simulated": server}


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("report"),
              show_default=True, help="Folder for comparison.csv/.parquet, plots and report.html.")
def main(dirs: tuple[Path, ...], out: Path) -> None:
    """Compare replay runs: DIRS are run folders, multirun sweep folders or replay-plan folders."""
    result = build(list(dirs), out)
    frame = result["table"]
    shown = frame if frame.is_empty() else frame.select(
        "label", *[c for c in ("reuse", "ttft_p50_s", "ttft_p99_s", "self_hosted_provisioned_usd_per_session",
                               "self_hosted_busy_usd_per_session", "api_usd_per_session")])
    click.echo(markdown(shown))
    if result["server_vs_simulated"] is not None:
        click.echo("\nserver vs simulated (per pair; per call in server_vs_simulated.csv):")
        click.echo(markdown(result["server_vs_simulated"]))
    click.echo(f"\nwrote {result['csv']}, {result['parquet']} and {result['html']}")


if __name__ == "__main__":
    sys.exit(main())
