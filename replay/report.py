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

from replay.plots import DPI, plt
from replay.server_compare import write_server_comparison
from replay.sweep import dotted_get, markdown, overrides_of, runs_in

COLUMNS = {
    "reuse": "reuse", "ttft_p50_s": "ttft_s.p50", "ttft_p99_s": "ttft_s.p99",
    "no_reuse_ttft_p50_s": "no_reuse_ttft_s.p50", "no_reuse_ttft_p99_s": "no_reuse_ttft_s.p99",
    "gpu_s": "gpu_s", "gpu_utilisation": "gpu_utilisation",
    "self_hosted_provisioned_usd_per_session": "self_hosted_provisioned_usd_per_session",
    "no_reuse_self_hosted_provisioned_usd_per_session": "no_reuse_self_hosted_provisioned_usd_per_session",
    "self_hosted_busy_usd_per_session": "self_hosted_busy_usd_per_session",
    "no_reuse_self_hosted_busy_usd_per_session": "no_reuse_self_hosted_busy_usd_per_session",
    "api_usd_per_session": "api_usd_per_session",
    "no_reuse_api_usd_per_session": "no_reuse_api_usd_per_session",
    "calls": "calls", "sessions": "sessions",
}


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (holding summary.json) given directly or inside sweep folders."""
    runs: list[Path] = []
    for p in paths:
        if not p.exists():
            raise click.ClickException(f"{p}: no such folder")
        if (p / "summary.json").exists():
            runs.append(p)
        else:
            found = runs_in(p)
            if not found:
                raise click.ClickException(f"{p}: neither a run folder (summary.json) nor a sweep folder")
            runs.extend(found)
    return runs


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
    return pl.DataFrame(rows, infer_schema_length=None)


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
        fig.tight_layout()
        fig.savefig(out / name, dpi=DPI)
        plt.close(fig)
        written.append(out / name)
    return written


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def html_report(frame: pl.DataFrame, plots: list[Path], runs: list[Path], out: Path) -> Path:
    """One HTML file that opens with no server: images inlined as base64."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in frame.iter_rows())
    sections = [f"<h2>Comparison</h2><table><tr>{head}</tr>{body}</table>",
                "<h2>Across runs</h2>" + "".join(_img(p) for p in plots)]
    for run in runs:
        pictures = sorted(run.glob("*.png"))
        if pictures:
            sections.append(f"<h2>{html.escape(label_of(run))}</h2>" + "".join(_img(p) for p in pictures))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>agent-replay report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:48%;margin:4px}</style></head>"
            f"<body><h1>agent-replay report</h1>{''.join(sections)}</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def build(paths: list[Path], out: Path) -> dict[str, Path]:
    runs = find_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    frame = table(runs)
    frame.write_csv(out / "comparison.csv")
    frame.write_parquet(out / "comparison.parquet")
    plots = comparison_plots(frame, out)
    page = html_report(frame, plots, runs, out)
    server = write_server_comparison(runs, out)  # http runs beside simulator runs of the same calls
    return {"csv": out / "comparison.csv", "parquet": out / "comparison.parquet", "html": page,
            "table": frame, "server_vs_simulated": server}


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("report"),
              show_default=True, help="Folder for comparison.csv/.parquet, plots and report.html.")
def main(dirs: tuple[Path, ...], out: Path) -> None:
    """Compare replay runs: DIRS are run folders or multirun sweep folders."""
    result = build(list(dirs), out)
    frame = result["table"]
    shown = frame.select("label", *[c for c in ("reuse", "ttft_p50_s", "ttft_p99_s",
                                                "self_hosted_provisioned_usd_per_session",
                                                "self_hosted_busy_usd_per_session", "api_usd_per_session")])
    click.echo(markdown(shown))
    if result["server_vs_simulated"] is not None:
        click.echo("\nserver vs simulated (per pair; per call in server_vs_simulated.csv):")
        click.echo(markdown(result["server_vs_simulated"]))
    click.echo(f"\nwrote {result['csv']}, {result['parquet']} and {result['html']}")


if __name__ == "__main__":
    sys.exit(main())
