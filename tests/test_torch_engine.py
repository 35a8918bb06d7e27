"""The torch engine: exact logits with cached prefixes and against transformers, bit-exact
offload, real reuse on a trace, and the analytic model calibrated to its measured times."""

import statistics
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import conf
from replaykit import compose_cfg

from engines.torch_engine.calibrate import DECODE_GRID, PREFILL_GRID, calibrate
from engines.torch_engine.kv_pool import KVPool, TieredKV
from engines.torch_engine.model import ModelArgs, SeqSlice, Transformer, load_hf_checkpoint
from replay.app import run
from traces.synth import generate, load_config

# a coding-agent trace shrunk to what a CPU replays in seconds
MINI = ["system_tokens=300", "tools_tokens=700",
        "project_tokens={median: 300, sigma: 0.3, min: 100, max: 1000}",
        "task_tokens={median: 100, sigma: 0.5, min: 10, max: 400}",
        "calls_per_prompt={median: 5, sigma: 0.5, min: 2, max: 10}", "human_prompts=[1,2]",
        "tool_result_tokens={median: 150, sigma: 1.0, min: 10, max: 1500}",
        "output_tokens={median: 20, sigma: 0.5, min: 2, max: 60}", "subagent.probability=0"]


def tiny_model(seed=0):
    model = Transformer(ModelArgs.from_model_cfg(conf("model", "tiny")))
    model.init_random(seed)
    return model.eval()


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_logits_with_a_cached_first_half_equal_a_full_recompute():
    model = tiny_model()
    a = model.a
    bs = 16
    pool = KVPool(a, 32, bs, "cpu", torch.float32)
    prompt = torch.randint(0, a.vocab, (96,), generator=torch.Generator().manual_seed(1))
    full = model(prompt, [SeqSlice(0, 96, 0, torch.arange(0, 6))], pool.k, pool.v, bs)
    # another sequence shares the first three blocks (48 tokens, from the cache), owns the rest
    model(prompt[:48], [SeqSlice(0, 48, 0, torch.arange(10, 13))], pool.k, pool.v, bs)
    slots = torch.tensor([10, 11, 12, 20, 21, 22])
    second = model(prompt[48:], [SeqSlice(0, 48, 48, slots)], pool.k, pool.v, bs)
    assert rel_err(second, full[48:]) < 1e-4


def test_batched_decode_equals_one_at_a_time():
    model = tiny_model()
    bs = 16
    pool = KVPool(model.a, 16, bs, "cpu", torch.float32)
    for i, n in enumerate((20, 33)):
        model(torch.arange(n) % 200, [SeqSlice(0, n, 0, torch.arange(i * 4, i * 4 + 4))], pool.k, pool.v, bs)
    tokens = torch.tensor([5, 7])
    seqs = [SeqSlice(0, 1, 20, torch.arange(0, 4)), SeqSlice(1, 1, 33, torch.arange(4, 8))]
    batched = model(tokens, seqs, pool.k, pool.v, bs)
    alone = model(tokens[1:], [SeqSlice(0, 1, 33, torch.arange(4, 8))], pool.k, pool.v, bs)
    assert rel_err(batched[1:], alone) < 1e-5


def test_offloaded_block_comes_back_bit_identical(tmp_path):
    a = tiny_model().a
    pool = KVPool(a, 4, 16, "cpu", torch.float32)
    kv = TieredKV(pool, tmp_path / "disk")
    h = np.array([12345], dtype=np.uint64)
    kv.move(h, None, 0)
    kv.place()
    slot = kv.slots[12345]
    for layer in range(a.layers):
        pool.k[layer][slot].normal_()
        pool.v[layer][slot].normal_()
    before = [t[slot].clone() for t in pool.k + pool.v]
    kv.move(h, 0, 1)  # to CPU memory
    kv.move(h, 1, 2)  # to disk
    assert list((tmp_path / "disk").iterdir())
    kv.move(h, 2, 0)
    kv.place()
    back = kv.slots[12345]
    assert all(torch.equal(b, t[back]) for b, t in zip(before, pool.k + pool.v, strict=True))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_matches_transformers_on_a_saved_checkpoint(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind]
    model_cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[kind]
    torch.manual_seed(0)
    reference = model_cls(cfg_cls(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  tie_word_embeddings=False)).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf_checkpoint(tmp_path)
    tokens = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(tokens[None]).logits[0]
    pool = KVPool(ours.a, 8, 8, "cpu", torch.float32)
    # prefill in two chunks through the paged cache, as the engine does
    first = ours(tokens[:24], [SeqSlice(0, 24, 0, torch.arange(8))], pool.k, pool.v, 8)
    second = ours(tokens[24:], [SeqSlice(0, 16, 24, torch.arange(8))], pool.k, pool.v, 8)
    assert rel_err(torch.cat([first, second]), expected) < 1e-4


def test_a_bad_checkpoint_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def mini_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "mini.parquet"
    generate(load_config("coding_agent", [*MINI, "sessions=20", "seed=5", "arrival.rate_per_s=0.05"]), path)
    return path


# Timing tests run torch on one thread and clock its steps in process CPU time (engine.clock=cpu):
# other processes on a busy machine then barely move the measured times, as the wall clock would.
STEADY = ["engine.threads=1", "engine.clock=cpu"]


def test_reuse_is_real_on_a_twenty_session_trace(tmp_path, mini_trace):
    """The small model, not the tiny one: its prefill outweighs the fixed cost of a step."""
    s = run(compose_cfg(["engine=torch", "model=small", "hardware=cpu", "parallel.tp=1", "plots=false",
                         "replay.baseline=off",
                         "engine.pool_blocks=512", "engine.cpu_blocks=256", "trace=file",
                         f"trace.path={mini_trace}", *STEADY]), tmp_path)
    df = pl.read_parquet(tmp_path / "requests.parquet")
    assert df.height == pl.read_parquet(mini_trace).height and s["reuse"] > 0.5
    assert (df["prefilled_tokens"] == df["input_tokens"] - df["reused_tokens"]).all()
    assert s["engine_stats"]["tiers"]["cpu"]["written_tokens"] > 0  # the offload tier was used
    # more reuse, less to prefill, earlier first token
    low = df.filter(pl.col("reused_tokens") < 0.5 * pl.col("input_tokens"))["ttft_s"].median()
    high = df.filter(pl.col("reused_tokens") >= 0.9 * pl.col("input_tokens"))["ttft_s"].median()
    assert high < low / 2
    corr = np.corrcoef(df["reused_tokens"] / df["input_tokens"], np.log(df["ttft_s"]))[0, 1]
    print(f"reuse vs log TTFT: corr {corr:.3f}; median TTFT high reuse {high:.4f} s, low {low:.4f} s")
    assert corr < -0.3


def test_calibrated_analytic_model_predicts_measured_ttft(tmp_path):
    torch.set_num_threads(1)  # one thread: far steadier timings on a shared machine
    shipped = resources.files("conf").joinpath("hardware", "cpu_calibrated.yaml").read_text()
    cal, errors = calibrate("small", "cpu", tmp_path / "calibration", clock="cpu")
    assert cal == tmp_path / "calibration" / "hardware" / "cpu_calibrated_small.yaml"
    assert resources.files("conf").joinpath("hardware", "cpu_calibrated.yaml").read_text() == shipped
    assert len(errors) == len(PREFILL_GRID) + len(DECODE_GRID)
    # the fit quality it prints, in sample: the fitted roofline against each measured point
    prefill_errors = [abs(e[-1]) for e in errors if e[0] == "prefill"]
    print(f"in-sample prefill error: median {statistics.median(prefill_errors):.3f}")
    assert statistics.median(prefill_errors) <= 0.25
    held_out = tmp_path / "held_out.parquet"  # sessions far apart: no queueing to model
    generate(load_config("coding_agent", [*MINI, "sessions=4", "seed=11", "arrival.rate_per_s=0.0001"]),
             held_out)
    base = ["model=small", "parallel.tp=1", "trace=file", f"trace.path={held_out}", "plots=false",
            "replay.baseline=off"]
    measured = []
    for i in range(3):  # the fastest of three replays, as calibration takes the fastest of its repeats
        out = tmp_path / f"torch{i}"
        out.mkdir()
        run(compose_cfg([*base, "engine=torch", "hardware=cpu", *STEADY]), out)
        measured.append(pl.read_parquet(out / "requests.parquet").select("request_id", "ttft_s"))
    torch_ttft = pl.concat(measured).group_by("request_id").agg(pl.col("ttft_s").min())
    out = tmp_path / "analytic"
    out.mkdir()
    search = f"hydra.searchpath=[file://{cal.parents[1]}]"
    run(compose_cfg([*base, "engine=analytic", "hardware=cpu_calibrated_small", "engine.concurrency=1",
                     search]), out)
    predicted = pl.read_parquet(out / "requests.parquet").select(
        "request_id", pl.col("ttft_s").alias("model"))
    both = torch_ttft.join(predicted, on="request_id")
    ratio = both["model"] / both["ttft_s"]
    # This VM's speed drifts between the calibration and the replays a minute later (the same
    # code measured 0.06 and 0.24 median error in two sittings, model always to one side):
    # divide that common factor out, bound it, and judge the model call by call.
    drift = statistics.median(ratio)
    errors = (ratio / drift - 1).abs()
    with pl.Config(tbl_rows=100):
        print(both.with_columns(error=(ratio - 1).abs(), error_after_drift=errors).sort("ttft_s"))
    print(f"calibrated model: median error {statistics.median((ratio - 1).abs()):.3f}, "
          f"{statistics.median(errors):.3f} after the machine's drift x{drift:.3f}")
    # Measured on this 2-core VM, quiet, same code, in four sittings: 0.047, 0.074, 0.089 and
    # 0.135 after the drift. The bound sits above that noise (issue 16: no test that fails on
    # a noisy machine), at twice the median error the calibration is meant to reach.
    assert both.height >= 20 and statistics.median(errors) <= 0.20
    assert 0.7 <= drift <= 1.4
    assert Path(cal).read_text().startswith("# Calibrated by replay-calibrate")


def test_calibrate_rejects_an_unknown_model():
    from click.testing import CliRunner

    from engines.torch_engine.calibrate import main

    result = CliRunner().invoke(main, ["--model", "no_such_model"])
    assert result.exit_code == 1 and "no such config" in result.output


def test_an_unknown_step_clock_is_a_config_error():
    from engines.specs import ConfigError
    from engines.torch_engine import TorchEngine

    with pytest.raises(ConfigError, match="engine.clock must be one of wall, cpu, got 'gpu'"):
        TorchEngine(conf("model", "tiny"), conf("hardware", "cpu"), {}, 1, 1, 16, clock="gpu")


def test_calibrate_help_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; "
            "from engines.torch_engine.calibrate import main; "
            "r = CliRunner().invoke(main, ['--help']); "
            "print(r.exit_code, 'torch' in sys.modules, '--clock' in r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "True"]
