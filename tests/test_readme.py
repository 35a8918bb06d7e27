"""README's notebook snippet, run as written on two runs with different cache tiers and a failed
run's folder beside them."""

import re
from pathlib import Path

import polars as pl
from replaykit import compose_cfg

from replay.app import run

README = Path(__file__).parents[1] / "README.md"


def snippet() -> str:
    text = README.read_text()
    start = text.index("Read results in a notebook with polars")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_polars_snippet_reads_runs_with_different_tiers(tmp_path, monkeypatch):
    day = tmp_path / "outputs" / "2026-01-01"
    for name, cache in (("10-00-00-000001", "hbm_only"), ("10-00-00-000002", "hbm_dram")):
        (day / name).mkdir(parents=True)
        run(compose_cfg([f"cache={cache}", "trace.sessions=1", "plots=false"]), day / name)
    (day / "10-00-00-000003" / ".hydra").mkdir(parents=True)  # a run that failed: no outputs
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet(), scope)
    runs, summaries = scope["runs"], scope["summaries"]
    assert sorted(runs["run"].unique()) == [f"outputs/2026-01-01/{n}" for n in ("10-00-00-000001",
                                                                                "10-00-00-000002")]
    assert {"reused_tokens_hbm", "reused_tokens_dram"} <= set(runs.columns)
    hbm_only = runs.filter(pl.col("run").str.ends_with("000001"))
    assert hbm_only["reused_tokens_dram"].null_count() == hbm_only.height  # a tier it does not have
    assert len(summaries) == 2 and all(s["calls"] > 0 for s in summaries.values())
    assert runs.height == sum(s["calls"] for s in summaries.values())
