"""After a multirun: one table comparing every run of the sweep (comparison.csv / .md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

KEYS = ["reuse", "ttft_s.p50", "ttft_s.p99", "no_reuse_ttft_s.p99", "gpu_s", "gpu_utilisation",
        "self_hosted_provisioned_usd_per_session", "self_hosted_busy_usd_per_session",
        "self_hosted_provisioned_saving", "api_usd_per_session", "api_saving"]


def dotted_get(summary: dict[str, Any], dotted: str) -> Any:
    """``summary["ttft_s"]["p50"]`` for "ttft_s.p50"; None where a part is missing."""
    value: Any = summary
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def runs_in(sweep_dir: Path) -> list[Path]:
    """The run folders of a sweep (those with a summary.json), in job-number order."""
    return sorted((s.parent for s in sweep_dir.glob("*/summary.json")),
                  key=lambda d: (len(d.name), d.name))


def overrides_of(run: Path) -> str:
    """The command-line overrides a run was made with, as one line ("" if unknown)."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    return " ".join(line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- "))


def compare(sweep_dir: Path) -> pl.DataFrame:
    """One row per run folder under ``sweep_dir`` that has a summary.json."""
    rows = []
    for run in runs_in(sweep_dir):
        summary = json.loads((run / "summary.json").read_text())
        row = {"run": run.name, "overrides": overrides_of(run)}
        row.update({k: dotted_get(summary, k) for k in KEYS})
        rows.append(row)
    return pl.DataFrame(rows)


def markdown(frame: pl.DataFrame) -> str:
    cols = frame.columns
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


class CompareRuns(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        frame = compare(sweep_dir)
        if frame.is_empty():
            return
        frame.write_csv(sweep_dir / "comparison.csv")
        text = markdown(frame)
        (sweep_dir / "comparison.md").write_text(text + "\n")
        print(f"\nsweep {sweep_dir}:\n{text}")
