"""The synthetic generators: valid, deterministic, and shaped like the workloads they model."""

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from traces.cli import main
from traces.expand import BlockExpander, children_counts
from traces.io import read_meta, scan
from traces.stats import inspect
from traces.synth import generate, load_config
from traces.validate import validate


@pytest.fixture(scope="module")
def coding(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "coding.parquet"
    generate(load_config("coding_agent", ["sessions=200", "seed=3"]), path)
    return path


@pytest.fixture(scope="module")
def email(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "email.parquet"
    generate(load_config("email_drafting", ["sessions=300", "seed=3"]), path)
    return path


def test_generated_traces_validate(coding, email):
    assert validate(coding) == []
    assert validate(email) == []


def test_coding_agent_reuse_and_shape(coding):
    figures = inspect(coding)
    assert figures["sessions"] == 200
    assert figures["ideal_reuse"] >= 0.90  # real sessions read 96-99% of input from cache
    assert 300 <= figures["context_growth_tokens"]["p50"] <= 900  # real median ~465-500
    assert 1_500 <= figures["context_growth_tokens"]["p90"] <= 5_000  # real p90 ~3k
    assert figures["calls_per_session"]["max"] >= 200
    first = scan(coding).filter(pl.col("turn") == 0).collect()
    assert first["input_tokens"].median() == pytest.approx(26_000, rel=0.1)  # real: 25.9k-26.5k


def test_all_sessions_share_their_system_prompt_blocks(coding):
    first = scan(coding).filter(pl.col("turn") == 0).collect()
    system_blocks = (3000 + 17000) // read_meta(coding).block_size
    heads = {tuple(h[:system_blocks]) for h in first["new_block_hashes"].to_list()}
    assert len(heads) == 1
    tails = {h[system_blocks + 5] for h in first["new_block_hashes"].to_list()}
    assert len(tails) == first.height  # past the shared part each session is its own


def test_children_extend_their_parents_except_across_compaction(coding):
    frame = scan(coding).sort("session_id", "turn").collect()
    bs = read_meta(coding).block_size
    expander = BlockExpander(bs, None)
    by_id = {}
    compactions = subagents = extended = 0
    for r in frame.iter_rows(named=True):
        full = expander.prompt(r["request_id"], r["parent_id"], r["kept_blocks"],
                               np.array(r["new_block_hashes"], np.uint64), r["input_tokens"],
                               r["output_tokens"])
        by_id[r["request_id"]] = r
        if r["parent_id"] is None:
            continue
        parent = by_id[r["parent_id"]]
        parent_seq = expander.sequence(r["parent_id"])
        kinds = [s["kind"] for s in r["segments"]]
        if "summary" in kinds and r["kept_blocks"] < len(parent_seq):
            compactions += 1
            assert r["kept_blocks"] == (3000 + 17000) // bs  # the prefix breaks after system+tools
        elif r["agent"] != parent["agent"]:
            subagents += 1
            assert r["kept_blocks"] == 0  # a subagent starts its own chain
        else:
            extended += 1
            assert r["kept_blocks"] == len(parent_seq)  # the whole parent sequence is kept
            assert r["input_tokens"] > parent["input_tokens"] + parent["output_tokens"] - 1
        assert (full[: r["kept_blocks"]] == parent_seq[: r["kept_blocks"]]).all()
    assert compactions > 0 and subagents > 0 and extended > 1000
    assert sum(children_counts(frame).values()) == compactions + subagents + extended


def test_email_drafting_has_lower_reuse_and_human_pauses(coding, email):
    e, c = inspect(email), inspect(coding)
    assert e["ideal_reuse"] < c["ideal_reuse"]
    assert e["think_s"]["p50"] >= 60
    calls = scan(email).group_by("session_id").len().collect()["len"]
    assert calls.min() == 1 and calls.max() == 5  # 0-4 revision rounds


def test_same_seed_same_bytes_other_seed_other_trace(tmp_path):
    runner = CliRunner()
    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / f"{name}.parquet"
        result = runner.invoke(main, ["generate", "email-drafting", "--sessions", "30",
                                      "--seed", str(seed), "--out", str(out)])
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


@pytest.mark.parametrize("override,message", [
    ("sessions=abc", "expected an integer"),
    ("no_such_knob=1", "no knob 'no_such_knob'"),
    ("arrival.process=sometimes", "arrival.process must be 'poisson' or 'spread'"),
    ("justtext", "not of the form key=value"),
])
def test_bad_overrides_get_one_line(tmp_path, override, message):
    out = tmp_path / "x.parquet"
    result = CliRunner().invoke(main, ["generate", "coding-agent", "--out", str(out), override])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and not out.exists()
