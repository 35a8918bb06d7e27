"""engine=http on a GPU: vLLM serving a Llama-3.1-8B-shaped model with random weights
(``--load-format dummy`` from a config folder written here, no tokenizer, token-id prompts,
``--enable-prompt-tokens-details``), 4 coding-agent sessions replayed through it, and the same
trace on the analytic and offload engines for the same GPU: TTFT/TPOT measured against
predicted, server cached tokens against simulated reuse. Meant to finish within 8 minutes.

Usage (from benchmarks/gpu_check.sh, on a machine with an NVIDIA GPU and vLLM installed):
    python -m benchmarks.gpu_http [--hardware h100_sxm] [--port 8011]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hydra import compose, initialize_config_module

from benchmarks.common import report
from replay.app import run
from replay.server_compare import pair_figures, per_call
from traces.synth import generate, load_config

# Llama-3.1-8B's shape (conf/model/llama3_1_8b.yaml), context cut to what the trace needs
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 65536, "torch_dtype": "bfloat16",
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
}
# 4 sessions of at most 12 calls, human pauses short: the replay takes about a minute
TRACE = ["sessions=4", "human_prompts=[1, 2]", "calls_per_prompt={median: 6, sigma: 0.3, min: 3, max: 6}",
         "human_pause_s={median: 5, sigma: 0.5, min: 1, max: 20}", "subagent.probability=0",
         "arrival.rate_per_s=0.2"]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hardware", default="h100_sxm", help="conf/hardware option of this GPU")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--time-scale", type=float, default=0.2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gpu_http."))
    model_dir = tmp / "llama3_1_8b_dummy"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(CONFIG, indent=1))
    trace = tmp / "coding.parquet"
    generate(load_config("coding_agent", TRACE), trace)
    url = f"http://127.0.0.1:{args.port}"
    log = open(tmp / "vllm.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", "dummy8b", "--load-format", "dummy", "--skip-tokenizer-init",
         "--enable-prompt-tokens-details", "--enable-prefix-caching", "--max-model-len", "65536",
         "--host", "127.0.0.1", "--port", str(args.port), "--gpu-memory-utilization", "0.85"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                print((tmp / "vllm.log").read_text()[-3000:])
                return 1
            time.sleep(2)
        common = ["trace=file", f"trace.path={trace}", "model=llama3_1_8b", f"hardware={args.hardware}",
                  "parallel.tp=1", f"replay.time_scale={args.time_scale}", "replay.progress=false",
                  "plots=false", "replay.baseline=off"]
        runs = {}
        for name, extra in (("http", ["engine=http", f"engine.base_url={url}", "engine.dialect=vllm",
                                      "engine.served_model=dummy8b", "engine.vocab_size=128000",
                                      "engine.metrics_counters=[vllm:prefix_cache_queries_total,"
                                      "vllm:prefix_cache_hits_total]"]),
                            ("analytic", ["engine=analytic"]), ("offload", ["engine=offload"])):
            out = tmp / name
            out.mkdir()
            with initialize_config_module(version_base=None, config_module="conf"):
                run(compose("config", overrides=[*common, *extra]), out)
            runs[name] = out
    finally:
        server.terminate()
        server.wait(60)
    figures: dict[str, object] = {}
    http = json.loads((runs["http"] / "summary.json").read_text())
    figures["http_calls"] = http["calls"]
    figures["http_errors"] = sum((http["engine_stats"]["http"]["errors"] or {}).values())
    figures["http_send_lag_p99_ms"] = (http["engine_stats"]["http"]["send_lag_p99_s"] or 0) * 1e3
    figures["http_tpot_p50_ms"] = (http["tpot_s"]["p50"] or 0) * 1e3
    figures["server_metrics_delta"] = json.dumps(http["engine_stats"]["http"]["server_metrics_delta"])
    for name in ("analytic", "offload"):
        pair = pair_figures(per_call(runs["http"], runs[name]))
        sim = json.loads((runs[name] / "summary.json").read_text())
        figures[f"{name}_tpot_p50_ms"] = (sim["tpot_s"]["p50"] or 0) * 1e3
        for key, value in pair.items():
            figures[f"{name}_{key}"] = value
    report(f"engine=http on vLLM (Llama-3.1-8B shape, dummy weights) vs simulators on {args.hardware}",
           figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
