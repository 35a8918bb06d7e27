"""After a multirun: one table comparing every run of the sweep (comparison.csv / .md).

A job that failed left failed.json (its reason) instead of summary.json: it gets a row whose
status names the reason, and the sweep exits 1 after writing the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

if TYPE_CHECKING:
    import polars as pl

FAILED = "failed.json"  # what a run that stopped on an error leaves: {"status", "error"}

KEYS = ["reuse", "ttft_s.p50", "ttft_s.p99", "no_reuse_ttft_s.p99", "queue_s.p99", "e2e_s.p99",
        "served_output_tokens_per_s", "saturation.saturated", "gpu_s", "gpu_utilisation",
        "self_hosted_provisioned_usd_per_session", "self_hosted_busy_usd_per_session",
        "self_hosted_provisioned_saving", "api_usd_per_session", "api_saving"]


def dotted_get(summary: dict[str, Any], dotted: str) -> Any:
    """``summary["ttft_s"]["p50"]`` for "ttft_s.p50" (a number indexes a list: "ci.reuse.0");
    None where a part is missing."""
    value: Any = summary
    for part in dotted.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def runs_in(sweep_dir: Path) -> list[Path]:
    """The run folders of a sweep that finished (with a summary.json), in job-number order."""
    return _in_order(s.parent for s in sweep_dir.glob("*/summary.json"))


def failed_in(sweep_dir: Path) -> list[Path]:
    """The run folders of a sweep's failed jobs (failed.json, no summary.json)."""
    return _in_order(f.parent for f in sweep_dir.glob(f"*/{FAILED}")
                     if not (f.parent / "summary.json").exists())


def _in_order(runs: Any) -> list[Path]:
    return sorted(runs, key=lambda d: (len(d.name), d.name))


def failure_of(run: Path) -> str:
    """A failed run's one-line reason ("" if the marker is unreadable)."""
    try:
        return str(json.loads((run / FAILED).read_text()).get("error", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def overrides_of(run: Path) -> str:
    """The command-line overrides a run was made with, as one line ("" if unknown)."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    return " ".join(line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- "))


def compare(sweep_dir: Path) -> pl.DataFrame:
    """One row per run folder under ``sweep_dir``: finished runs with their figures, failed
    ones with ``status`` naming the reason and empty figures."""
    import polars as pl

    rows = []
    for run in _in_order([*runs_in(sweep_dir), *failed_in(sweep_dir)]):
        row: dict[str, Any] = {"run": run.name, "overrides": overrides_of(run)}
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
            row["status"] = "interrupted" if summary.get("interrupted") else "ok"
            row.update({k: dotted_get(summary, k) for k in KEYS})
        else:
            row["status"] = f"failed: {failure_of(run)}"
            row.update(dict.fromkeys(KEYS))
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def _cell(v: Any) -> str:
    """4 significant digits, large figures in full with separators (17,440, not 1.744e+04)."""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(frame: pl.DataFrame) -> str:
    cols = frame.columns
    fmt = _cell
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


class CompareRuns(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        frame = compare(sweep_dir)
        if frame.is_empty():
            return
        from replay.atomic import write_atomic, write_text

        write_atomic(sweep_dir / "comparison.csv", frame.write_csv)
        text = markdown(frame)
        write_text(sweep_dir / "comparison.md", text + "\n")
        print(f"\nsweep {sweep_dir}:\n{text}")
        failed = frame.filter(frame["status"].str.starts_with("failed")).height
        if failed:
            print(f"error: {failed} of {frame.height} jobs failed (status column)", file=sys.stderr)
            sys.exit(1)
