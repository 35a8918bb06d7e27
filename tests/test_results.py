"""What people look at: run plots, the report command and the notebooks, end to end."""

import json
import re
import time
from pathlib import Path

import nbformat
import polars as pl
import pytest
from click.testing import CliRunner
from nbclient import NotebookClient
from replaykit import compose_cfg

from replay.app import run
from replay.report import main as report_main

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, overrides in {"analytic": ["trace.sessions=3"],
                            "offload": ["engine=offload", "trace.sessions=3"]}.items():
        (root / name).mkdir()
        out[name] = (root / name, run(compose_cfg(overrides), root / name))
    return out


def test_every_run_writes_its_plots(runs):
    for name, (folder, _) in runs.items():
        written = {p.name for p in folder.glob("*.png")}
        assert {"ttft_cdf.png", "reuse_by_turn.png", "cost.png"} <= written, name
        assert ("tiers.png" in written) == (name == "offload")
        assert all(p.stat().st_size > 5_000 for p in folder.glob("*.png"))


def test_report_table_html_and_numbers(tmp_path, runs):
    result = CliRunner().invoke(report_main, [str(f) for f, _ in runs.values()] + ["--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| label | reuse |" in result.output
    table = pl.read_parquet(tmp_path / "comparison.parquet")
    assert table.equals(pl.read_csv(tmp_path / "comparison.csv", schema=table.schema))
    for row in table.iter_rows(named=True):
        summary = json.loads((Path(row["run"]) / "summary.json").read_text())
        assert row["reuse"] == summary["reuse"]
        assert row["ttft_p99_s"] == summary["ttft_s"]["p99"]
        assert row["api_usd_per_session"] == summary["api_usd_per_session"]
        for key in ("self_hosted_provisioned_usd_per_session", "self_hosted_busy_usd_per_session",
                    "no_reuse_self_hosted_provisioned_usd_per_session", "gpu_utilisation"):
            assert row[key] == summary[key], key
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 3 + 7  # comparison plots and every run's plots, all inline
    assert "src=\"http" not in page and "src=\"file" not in page


def test_report_rejects_a_folder_without_runs(tmp_path):
    result = CliRunner().invoke(report_main, [str(tmp_path)])
    assert result.exit_code == 1 and "neither a run folder" in result.output


def test_notebooks_run_clean_and_fast(monkeypatch):
    monkeypatch.setenv("AGENT_REPLAY_NOTEBOOK_QUICK", "1")  # capacity_plan: two small candidates a workload
    start = time.perf_counter()
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), \
            f"{path.name} is stored with outputs"
        NotebookClient(notebook, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    assert len(NOTEBOOKS) == 4
    assert time.perf_counter() - start < 120
