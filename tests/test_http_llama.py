"""engine=http against a real llama.cpp server serving SmolLM2-135M (see tests/llama_server.py):
the server's own cached-token count per call equals what llama.cpp's cache rules predict."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from replay.app import run
from tests import llama_server
from tests.replaykit import compose_cfg
from traces.expand import expand
from traces.hashing import output_blocks_after
from traces.synth import generate, load_config

BS = 16
# a 3-session coding-agent trace shrunk to a few hundred tokens per call
SMALL = ["sessions=3", f"block_size={BS}", "agent_versions=1", "system_tokens=96", "tools_tokens=96",
         "project_tokens={median: 64, sigma: 0.3, min: 32, max: 128}",
         "task_tokens={median: 32, sigma: 0.5, min: 8, max: 64}", "human_prompts=[1, 2]",
         "calls_per_prompt={median: 3, sigma: 0.3, min: 2, max: 4}",
         "output_tokens={median: 12, sigma: 0.5, min: 4, max: 24}",
         "tool_result_tokens={median: 48, sigma: 0.5, min: 8, max: 128}",
         "user_tokens={median: 24, sigma: 0.5, min: 5, max: 64}",
         "human_pause_s={median: 2, sigma: 0.5, min: 1, max: 4}",
         "tool_s={median: 1, sigma: 0.5, min: 0.2, max: 2}",
         "subagent.probability=0", "arrival.rate_per_s=0.1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from llama_server.start(tmp_path_factory.mktemp("llama") / "server.log")


def _common_blocks(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def predicted_cache_n(trace, df: pl.DataFrame) -> dict[str, int]:
    """llama.cpp's rule with one slot: a call reuses the longest common token prefix of its prompt
    and the sequence whose KV the slot holds (the previous call's prompt and output, less the last
    output token, which is sampled but never run through the model), and always computes its own
    last prompt token. Equal block hashes are equal tokens; a different block's tokens are drawn
    from another seed, so the common prefix ends at the first different block. The server runs
    calls one at a time, so they reach it in first-token order."""
    prompts = dict(expand(trace))
    rows = {r["request_id"]: r for r in pl.read_parquet(trace).to_dicts()}
    predicted, held, held_len = {}, np.empty(0, dtype=np.uint64), 0
    for rid in df.sort("first_token_s")["request_id"]:
        blocks, r = prompts[rid], rows[rid]
        n, out = r["input_tokens"], r["output_tokens"]
        predicted[rid] = min(_common_blocks(held, blocks) * BS, held_len, n - 1)
        held = np.concatenate([blocks, output_blocks_after(blocks, rid, n, out, BS)])
        held_len = n + out - 1
    return predicted


def test_server_cached_tokens_match_llama_cpp_cache_rules(tmp_path, server):
    trace = tmp_path / "small.parquet"
    generate(load_config("coding_agent", SMALL), trace)
    out = tmp_path / "run"
    out.mkdir()
    summary = run(compose_cfg(["engine=http", f"engine.base_url={server}", "engine.dialect=llamacpp",
                               "trace=file", f"trace.path={trace}", "replay.time_scale=0.05",
                               "plots=false"]), out)
    df = pl.read_parquet(out / "requests.parquet")
    assert df.height == 12 and df["error"].null_count() == 12
    assert df["server_prompt_tokens"].to_list() == df["input_tokens"].to_list()
    assert df["server_output_tokens"].to_list() == df["output_tokens"].to_list()
    predicted = predicted_cache_n(trace, df)
    got = dict(zip(df["request_id"], df["server_cached_tokens"], strict=True))
    assert got == predicted
    assert summary["reuse"] == pytest.approx(sum(predicted.values()) / df["input_tokens"].sum())
    stats = json.loads((out / "summary.json").read_text())["engine_stats"]["http"]
    assert stats["synthetic_output_blocks"] == 0 and stats["output_ids_missing_calls"] == 0
    # prefill of the uncached part dominates TTFT on this model: high-reuse calls answer first
    share = df["server_cached_tokens"] / df["input_tokens"]
    high, low = df.filter(share >= 0.8)["ttft_s"], df.filter(share < 0.6)["ttft_s"]
    assert high.len() and low.len() and high.median() < low.median()
