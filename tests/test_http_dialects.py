"""What each http dialect sends and reads (events in the shapes the servers document), the
token-id prompts, and the Prometheus counters."""

from __future__ import annotations

import numpy as np

from engines.http.dialects import DIALECTS, Reply
from engines.http.prompts import PromptBuilder
from engines.http.server_info import parse_counters


def test_each_dialect_sends_only_its_servers_fields():
    keys = {name: set(d.body("m", [5, 6], 3)) for name, d in DIALECTS.items()}
    openai = {"model", "prompt", "max_tokens", "temperature", "stream", "stream_options"}
    assert keys["openai"] == openai
    assert keys["trtllm"] == openai | {"ignore_eos", "min_tokens"}
    assert keys["vllm"] == openai | {"ignore_eos", "min_tokens", "return_token_ids"}
    assert keys["sglang"] == {"input_ids", "stream", "sampling_params"}
    assert keys["llamacpp"] == {"prompt", "n_predict", "ignore_eos", "temperature", "stream", "cache_prompt",
                                "return_tokens"}
    assert DIALECTS["vllm"].body("m", [5, 6], 3)["min_tokens"] == 3


def _read(name: str, events: list[dict]) -> Reply:
    reply = Reply()
    for e in events:
        DIALECTS[name].read(e, reply)
    return reply


def test_vllm_events_give_ids_and_cached_tokens():
    r = _read("vllm", [
        {"choices": [{"text": "a", "token_ids": [11]}]},
        {"choices": [{"text": "b", "token_ids": [12], "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 2,
                                  "prompt_tokens_details": {"cached_tokens": 32}}},
    ])
    assert (r.chunks, r.output_ids, r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.done) == \
        (2, [11, 12], 40, 32, 2, True)


def test_openai_without_details_reports_no_cached_tokens_and_no_ids():
    r = _read("openai", [{"choices": [{"text": "a"}]},
                         {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 1}}])
    assert (r.chunks, r.ids_returned, r.cached_tokens, r.prompt_tokens) == (1, False, None, 40)


def test_sglang_reads_cumulative_and_incremental_output_ids():
    cumulative = _read("sglang", [
        {"output_ids": [3], "meta_info": {"prompt_tokens": 9, "completion_tokens": 1, "cached_tokens": 8}},
        {"output_ids": [3, 4], "meta_info": {"completion_tokens": 2, "finish_reason": {"type": "length"}}},
    ])
    incremental = _read("sglang", [
        {"output_ids": [3], "meta_info": {"prompt_tokens": 9, "completion_tokens": 1, "cached_tokens": 8}},
        {"output_ids": [4], "meta_info": {"completion_tokens": 2, "finish_reason": {"type": "length"}}},
    ])
    for r in (cumulative, incremental):
        assert (r.chunks, r.output_ids, r.prompt_tokens, r.cached_tokens, r.done) == (2, [3, 4], 9, 8, True)


def test_llamacpp_prompt_tokens_are_cached_plus_computed():
    r = _read("llamacpp", [{"content": "x", "tokens": [9], "stop": False},
                           {"content": "", "stop": True,
                            "timings": {"cache_n": 575, "prompt_n": 1, "predicted_n": 1}}])
    assert (r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.output_ids) == (576, 575, 1, [9])


def test_equal_hashes_give_equal_ids_and_learned_output_blocks_replace_drawn_ones():
    pb = PromptBuilder(block_size=4, vocab_size=50, low=10)
    a = pb.prompt("r1", np.array([7, 8], dtype=np.uint64), 10)
    b = pb.prompt("r2", np.array([7, 9], dtype=np.uint64), 8)
    assert len(a) == 10 and (a[:4] == b[:4]).all() and not (a[4:8] == b[4:8]).all()
    assert a.min() >= 10 and a.max() < 50
    # r1 (10 prompt tokens, 2 full blocks) returned 6 ids: its sequence's third block is prompt[8:10] + 2 ids
    pb.expect(np.array([100, 101], dtype=np.uint64))
    assert pb.learn(a, [1, 2, 3, 4, 5, 6], np.array([100, 101], dtype=np.uint64)) == 2
    child = pb.prompt("r3", np.array([7, 8, 100, 101], dtype=np.uint64), 16)
    assert child[:8].tolist() == a[:8].tolist() and child[8:16].tolist() == [*a[8:10], 1, 2, 3, 4, 5, 6]
    assert pb.synthetic_blocks == 0
    pb.expect(np.array([200], dtype=np.uint64))  # a call that never returned its ids
    pb.prompt("r4", np.array([200], dtype=np.uint64), 4)
    assert pb.synthetic_blocks == 1


def test_prometheus_counters_sum_over_labels():
    text = ('# HELP vllm:prefix_cache_hits_total x\nvllm:prefix_cache_hits_total{model="a"} 30\n'
            'vllm:prefix_cache_hits_total{model="b"} 12.5\nvllm:prefix_cache_queries_total 100\nother 1\n')
    assert parse_counters(text, ["vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"]) == {
        "vllm:prefix_cache_hits_total": 42.5, "vllm:prefix_cache_queries_total": 100.0}
