"""After a multirun: one table comparing every run of the sweep (comparison.csv / .md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

KEYS = ["reuse", "ttft_s.p50", "ttft_s.p99", "gpu_s", "self_hosted_usd_per_session",
        "api_usd_per_session", "api_saving"]


def _get(summary: dict[str, Any], dotted: str) -> Any:
    value: Any = summary
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compare(sweep_dir: Path) -> pl.DataFrame:
    """One row per run folder under ``sweep_dir`` that has a summary.json."""
    rows = []
    by_job_number = lambda p: (len(p.parent.name), p.parent.name)  # noqa: E731
    for summary_path in sorted(sweep_dir.glob("*/summary.json"), key=by_job_number):
        summary = json.loads(summary_path.read_text())
        overrides_file = summary_path.parent / ".hydra" / "overrides.yaml"
        overrides = ""
        if overrides_file.exists():
            overrides = " ".join(line[2:].strip() for line in overrides_file.read_text().splitlines()
                                 if line.startswith("- "))
        row = {"run": summary_path.parent.name, "overrides": overrides}
        row.update({k: _get(summary, k) for k in KEYS})
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
