"""Importers: real Claude Code sessions against an independent count, hand-written fixtures of
every format, the Mooncake round trip, and every kind of bad input in strict and lenient modes."""

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from replaykit import compose_cfg

from replay.app import run
from traces.cli import main
from traces.importers import import_trace
from traces.io import read_meta
from traces.schema import TraceError
from traces.stats import inspect
from traces.validate import validate

DATA = Path(__file__).parent / "data"
REAL = sorted((DATA / "claude_code").glob("*.jsonl"))


def independent_calls(path: Path) -> dict[tuple[str, str], dict]:
    """One call per (message.id, requestId), the line with the largest token total kept: over
    top-level assistant lines and the assistant messages of agent_progress lines."""
    calls = {}
    for raw in path.read_text().splitlines():
        line = json.loads(raw)
        if line.get("type") == "assistant":
            message, rid = line["message"], line["requestId"]
        elif line.get("type") == "progress" and line["data"].get("type") == "agent_progress" \
                and line["data"]["message"]["type"] == "assistant":
            message, rid = line["data"]["message"]["message"], line["data"]["message"]["requestId"]
        else:
            continue
        u = message["usage"]
        total = sum(u.get(k, 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                           "cache_read_input_tokens", "output_tokens"))
        key = (message["id"], rid)
        if key not in calls or total > calls[key]["total"]:
            calls[key] = {"total": total, "input": u["input_tokens"] + u["cache_creation_input_tokens"]
                          + u["cache_read_input_tokens"], "output": u["output_tokens"],
                          "read": u["cache_read_input_tokens"]}
    return calls


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_real_claude_code_sessions(tmp_path, path):
    out = tmp_path / "t.parquet"
    n, problems = import_trace("claude-code", [str(path)], out)
    expected = independent_calls(path)
    df = pl.read_parquet(out)
    assert n == df.height == len(expected)
    assert df["input_tokens"].sum() == sum(c["input"] for c in expected.values())
    assert df["output_tokens"].sum() == sum(c["output"] for c in expected.values())
    assert df["reported_cached_tokens"].sum() == sum(c["read"] for c in expected.values())
    assert validate(out) == []
    assert set(df["cache_ttl_s"].drop_nulls()) == {3600.0}  # these sessions wrote 1-hour entries
    # the simulated Anthropic cache reproduces what the provider reported reading
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = run(compose_cfg(["trace=file", f"trace.path={out}", "pricing=anthropic_opus_4_5"]), run_dir)
    requests = pl.read_parquet(run_dir / "requests.parquet")
    for session, group in requests.group_by("session_id"):
        reported, simulated = group["reported_cached_tokens"].sum(), group["api_cached_tokens"].sum()
        assert simulated == pytest.approx(reported, rel=0.05), session
    assert summary["simulated_api_usd_where_reported"] == pytest.approx(summary["reported_api_usd"], rel=0.05)


def test_claude_code_subagents_and_api_errors(tmp_path):
    out = tmp_path / "t.parquet"
    import_trace("claude-code", [str(DATA / "claude_code" / "subagent.jsonl")], out)
    df = pl.read_parquet(out)
    subs = df.filter(pl.col("agent") == "subagent")
    assert subs.height == 5 and subs["session_id"].n_unique() == 1
    first = subs.sort("arrival_s").row(0, named=True)
    assert first["kept_blocks"] == 0 and first["parent_id"] in set(df["request_id"])
    assert set(subs["model"]) == {"claude-haiku-4-5-20251001"}  # subagents ran on a smaller model
    assert set(df.filter(pl.col("agent") == "main")["model"]) == {"claude-opus-4-6"}
    bad = tmp_path / "errors.jsonl"
    good = (DATA / "claude_code" / "short.jsonl").read_text().splitlines()
    error_line = json.loads(next(line for line in good if '"assistant"' in line))
    error_line["isApiErrorMessage"] = True
    error_line["message"]["model"] = "<synthetic>"
    error_line["requestId"] = "req_error"
    bad.write_text("\n".join(good + [json.dumps(error_line)]) + "\n")
    n, problems = import_trace("claude-code", [str(bad)], tmp_path / "e.parquet")
    assert n == 1 and problems.counted == {"API-error lines": 1}
    assert read_meta(tmp_path / "e.parquet").source["dropped"] == {"API-error lines": 1}


def test_mooncake_by_hand_and_round_trip(tmp_path):
    """Blocks of 512. r1 [1,2] sees nothing; r2 [1,2] reuses both (1024 of 1100); s1's first call
    [7] (its 8 is a partial block) sees nothing; s1's second keeps [7] from its parent, then 8, 9
    are new: (1535)//512 = 2 reusable, 1 reused = 512. Ideal reuse (1024 + 512) / 4436."""
    out = tmp_path / "m.parquet"
    import_trace("mooncake", [str(DATA / "mooncake.jsonl")], out)
    assert validate(out) == []
    figures = inspect(out)
    assert figures["ideal_reuse"] == pytest.approx(1536 / 4436)
    assert figures["sessions"] == 3 and figures["requests"] == 4
    runner = CliRunner()
    result = runner.invoke(main, ["export", "mooncake", str(out), "--out", str(tmp_path / "e.jsonl")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [x["timestamp"] for x in lines] == [0, 1000, 2000, 3500]
    assert lines[3]["delay"] == 1000 and "delay" not in lines[2]
    back = tmp_path / "back.parquet"
    result = runner.invoke(main, ["import", "mooncake", str(tmp_path / "e.jsonl"), "--out", str(back)])
    assert result.exit_code == 0, result.output
    cols = ["arrival_s", "think_s", "input_tokens", "output_tokens", "kept_blocks", "turn"]
    a = pl.read_parquet(out).sort("arrival_s").select(cols)
    b = pl.read_parquet(back).sort("arrival_s").select(cols)
    assert a.equals(b)
    assert inspect(back)["ideal_reuse"] == figures["ideal_reuse"]


def test_export_of_a_generated_trace_keeps_calls_and_reuse(tmp_path):
    from traces.synth import generate, load_config

    src = tmp_path / "g.parquet"
    generate(load_config("email_drafting", ["sessions=30"]), src)
    runner = CliRunner()
    assert runner.invoke(main, ["export", "mooncake", str(src), "--out", str(tmp_path / "e.jsonl"),
                                "--block-size", "64"]).exit_code == 0
    back = tmp_path / "b.parquet"
    assert runner.invoke(main, ["import", "mooncake", str(tmp_path / "e.jsonl"), "--out", str(back),
                                "--block-size", "64"]).exit_code == 0
    a, b = pl.read_parquet(src), pl.read_parquet(back)
    assert a.height == b.height and a["input_tokens"].sum() == b["input_tokens"].sum()
    rel = lambda df: df.sort("arrival_s")["arrival_s"] - df["arrival_s"].min()  # noqa: E731
    assert (rel(a) - rel(b)).abs().max() < 1e-3  # imports start the clock at the first call
    # Mooncake ids hash prompts only: a child no longer keeps its parent's output blocks (the draft
    # it revises, 150-600 tokens of a ~6k prompt), so reuse drops by about that share and no more
    assert 0 < inspect(src)["ideal_reuse"] - inspect(back)["ideal_reuse"] < 0.05


def test_bailian_sessions_from_parent_chains(tmp_path):
    out = tmp_path / "b.parquet"
    import_trace("bailian", [str(DATA / "bailian.jsonl")], out)
    assert validate(out) == []
    df = pl.read_parquet(out).sort("arrival_s")
    assert df["session_id"].to_list() == ["chat-10", "chat-20", "chat-10", "chat-10"]
    assert df["parent_id"].to_list() == [None, None, "10", "11"]
    assert df["kept_blocks"].to_list() == [0, 0, 2, 4]
    # blocks of 16 (ids past input_length // 16 name the partial last block and are dropped):
    # 10 sees nothing; 20 shares block 100 with 10, then differs: 16 of 33; 11 keeps 10's 2 blocks
    # (32); 12 keeps 11's 4 blocks, and 104 (11's partial block) is new: 64
    assert inspect(out)["ideal_reuse"] == pytest.approx((16 + 32 + 64) / (40 + 33 + 70 + 90))


def test_weka_sessions_with_subagents(tmp_path):
    out = tmp_path / "w.parquet"
    import_trace("weka", [str(DATA / "weka.jsonl")], out)
    assert validate(out) == []
    df = pl.read_parquet(out)
    a = df.filter(pl.col("session_id") == "sessA").sort("turn")
    assert a["agent"].to_list() == ["main", "main", "subagent", "subagent"]
    assert a["parent_id"].to_list() == [None, "sessA/0", "sessA/1", "sessA/a1/0"]
    assert a["kept_blocks"].to_list() == [0, 3, 0, 2]
    assert a["think_s"].to_list() == [0.0, 3.0, 0.1, 1.0]
    # local scope: sessB's ids 1,2,3 are not sessA's, so nothing is shared across sessions
    first_blocks = df.filter(pl.col("turn") == 0).sort("session_id")["new_block_hashes"].to_list()
    assert not set(first_blocks[0]) & set(first_blocks[1])


def test_azure_has_no_reuse_and_says_why(tmp_path):
    out = tmp_path / "a.parquet"
    import_trace("azure", [str(DATA / "azure.csv")], out)
    assert validate(out) == [] and inspect(out)["ideal_reuse"] == 0.0
    assert "every block is unique" in read_meta(out).source["note"]
    assert pl.read_parquet(out)["arrival_s"].to_list() == pytest.approx([0.0, 4.314579, 4.591312])


def test_codex_token_counts(tmp_path):
    out = tmp_path / "c.parquet"
    n, _ = import_trace("codex", [str(DATA / "codex_session_alpha.jsonl")], out)
    df = pl.read_parquet(out)
    assert n == 2 and df["input_tokens"].to_list() == [1000, 2500]
    assert df["reported_cached_tokens"].to_list() == [250, 500]
    assert df["model"].to_list() == ["gpt-5.2-codex", "gpt-5.3-codex"]
    assert validate(out) == []


# -- bad input: every kind, every importer, lenient and strict ---------------------------------

GOOD = {
    "mooncake": '{"timestamp": 0, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 3]}',
    "bailian": '{"chat_id": 1, "parent_chat_id": -1, "timestamp": 0, "input_length": 40, '
               '"output_length": 5, "type": "text", "turn": 1, "hash_ids": [1, 2]}',
    "weka": '{"id": "s", "block_size": 64, "hash_id_scope": "local", "requests": [{"t": 0, "in": 128, '
            '"out": 5, "hash_ids": [1, 2], "think_time": 0}]}',
    "claude-code": '{"type": "assistant", "sessionId": "s", "timestamp": "2026-01-01T00:00:00.000Z", '
                   '"requestId": "r1", "message": {"id": "m1", "model": "claude-sonnet-4", "usage": '
                   '{"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 0, '
                   '"output_tokens": 5}}}',
    "codex": '{"timestamp": "2026-01-01T00:00:00.000Z", "type": "event_msg", "payload": {"type": '
             '"token_count", "info": {"last_token_usage": {"input_tokens": 100, "cached_input_tokens": 0, '
             '"output_tokens": 5}, "total_token_usage": {"input_tokens": 100, "cached_input_tokens": 0, '
             '"output_tokens": 5}}}}',
    "azure": "TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,5",
}
# (kind) -> how each importer's bad line looks: (old text, new text) replacements of its good line
BREAK = {
    "missing field": {"mooncake": ('"input_length": 1100, ', ""), "bailian": ('"input_length": 40, ', ""),
                      "weka": ('"in": 128, ', ""), "claude-code": ('"requestId": "r1", ', ""),
                      "codex": ('"input_tokens": 100, "cached_input_tokens": 0, "output_tokens": 5}, "total',
                                '"cached_input_tokens": 0, "output_tokens": 5}, "total'),
                      "azure": (",100,5", ",,5")},
    "mistyped field": {"mooncake": ('"input_length": 1100', '"input_length": "1100"'),
                       "bailian": ('"hash_ids": [1, 2]', '"hash_ids": "1,2"'),
                       "weka": ('"in": 128', '"in": "many"'),
                       "claude-code": ('"output_tokens": 5', '"output_tokens": "five"'),
                       "codex": ('"output_tokens": 5}, "total', '"output_tokens": "5"}, "total'),
                       "azure": (",100,5", ",lots,5")},
    "negative count": {"mooncake": ('"output_length": 10', '"output_length": -10'),
                       "bailian": ('"output_length": 5', '"output_length": -5'),
                       "weka": ('"out": 5', '"out": -5'),
                       "claude-code": ('"output_tokens": 5', '"output_tokens": -5'),
                       "codex": ('"output_tokens": 5}, "total', '"output_tokens": -5}, "total'),
                       "azure": (",100,5", ",100,-5")},
}
FORMATS = sorted(GOOD)
KINDS = ["malformed JSON", "missing field", "mistyped field", "negative count", "bad UTF-8", "empty file"]


def bad_input(tmp_path: Path, fmt: str, kind: str) -> tuple[list[str], str]:
    """Files holding one good call and one bad line (or an empty file); returns (paths, where)."""
    suffix = ".csv" if fmt == "azure" else ".jsonl"
    good = tmp_path / f"good{suffix}"
    good.write_text(GOOD[fmt] + "\n")
    bad = tmp_path / f"bad{suffix}"
    header = "TIMESTAMP,ContextTokens,GeneratedTokens\n" if fmt == "azure" else ""
    line = GOOD[fmt].splitlines()[-1]
    if kind == "empty file":
        bad.write_bytes(b"")
        return [str(good), str(bad)], f"{bad}: file is empty"
    if kind == "malformed JSON":
        text = (header + "1,2,3,4,5\n") if fmt == "azure" else '{"timestamp": 0, "input_length": \n'
    elif kind == "bad UTF-8":
        bad.write_bytes(header.encode() + b"\xff\xfe broken \xc3\x28\n")
        where = f"{bad}" if fmt == "azure" else f"{bad}:1"
        return [str(good), str(bad)], where
    else:
        old, new = BREAK[kind][fmt]
        assert old in line, (fmt, kind)
        text = header + line.replace(old, new) + "\n"
    bad.write_text(text)
    return [str(good), str(bad)], f"{bad}:2" if fmt == "azure" else f"{bad}:1"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_lenient_and_strict(tmp_path, fmt, kind):
    paths, where = bad_input(tmp_path, fmt, kind)
    out = tmp_path / "out.parquet"
    runner = CliRunner()
    result = runner.invoke(main, ["import", fmt, *paths, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert where in result.output and "skipped 1 bad line" in result.output
    assert read_meta(out).source["skipped_lines"] == 1
    assert pl.read_parquet(out).height == 1 and validate(out) == []
    strict_out = tmp_path / "strict.parquet"
    result = runner.invoke(main, ["import", fmt, *paths, "--out", str(strict_out), "--strict"])
    assert result.exit_code == 1 and where in result.output and "Traceback" not in result.output
    assert not strict_out.exists() and not Path(str(strict_out) + ".partial").exists()


def test_nothing_importable_is_an_error(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(TraceError, match="no calls to write"):
        import_trace("mooncake", [str(empty)], tmp_path / "o.parquet")
    result = CliRunner().invoke(main, ["import", "mooncake", str(tmp_path / "missing.jsonl"),
                                       "--out", str(tmp_path / "o.parquet")])
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_export_rejects_a_block_size_that_is_not_a_multiple(tmp_path):
    out = tmp_path / "m.parquet"
    import_trace("mooncake", [str(DATA / "mooncake.jsonl")], out)
    result = CliRunner().invoke(main, ["export", "mooncake", str(out), "--out", str(tmp_path / "e.jsonl"),
                                       "--block-size", "100"])
    assert result.exit_code == 1 and "not a multiple of the trace's 512" in result.output
    assert not (tmp_path / "e.jsonl").exists()


def test_claude_code_import_says_how_many_calls_came_from_agent_progress(tmp_path):
    # subagent.jsonl logs its subagent inside the main transcript: 19 agent_progress lines, which
    # stream 5 distinct (message id, request id) assistant calls (the 5 subagent rows above);
    # short.jsonl has none.
    out = tmp_path / "t.parquet"
    result = CliRunner().invoke(main, ["import", "claude-code", str(DATA / "claude_code" / "subagent.jsonl"),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 calls from agent_progress lines" in result.output
    assert read_meta(out).source["counts"] == {
        "calls from agent_progress lines (subagents logged inside the main transcript; ccusage does not "
        "count them)": 5}
    result = CliRunner().invoke(main, ["import", "claude-code", str(DATA / "claude_code" / "short.jsonl"),
                                       "--out", str(tmp_path / "s.parquet")])
    assert "0 calls from agent_progress lines" in result.output
