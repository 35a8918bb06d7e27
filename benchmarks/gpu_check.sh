#!/usr/bin/env bash
# The torch engine on a GPU in under five minutes: correctness checks, then prefill and decode
# throughput of Llama-3.1-8B-sized layers with random weights (8 of its 32 layers), each ending
# in a table; then (at most 8 more minutes) engine=http against vLLM on the same GPU. Run from the repository root on a machine with CUDA and the package installed:
#   bash benchmarks/gpu_check.sh
# GPU_CHECK_HARDWARE: this GPU's conf/hardware option (default: h200 on an H200, else h100_sxm),
# whose roofline assumptions the timings are set beside. GPU_CHECK_HTTP=0 skips step 7.
set -euo pipefail
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || true)
echo "GPU: $gpu"
case "$gpu" in *H200*) default_hw=h200 ;; *) default_hw=h100_sxm ;; esac
hw=${GPU_CHECK_HARDWARE:-$default_hw}
python -m benchmarks.gpu_check
python -m benchmarks.torch_engine --device cuda --model llama3_1_8b --layers 8 --chunk 2048 --batch 32 --hardware "$hw"
python -m benchmarks.torch_engine --device cuda --model llama3_1_8b --layers 8 --chunk 8192 --batch 64 --hardware "$hw"
[ "${GPU_CHECK_HTTP:-1}" = 0 ] && exit 0
# 7. engine=http against a real vLLM server on this GPU (Llama-3.1-8B shape, random weights): measured
#    TTFT/TPOT and server cached tokens against the analytic and offload engines' predictions.
#    Needs vLLM (pip install vllm; a few minutes).
if python -c "import vllm" 2>/dev/null || pip install -q vllm; then
  timeout 480 python -m benchmarks.gpu_http --hardware "$hw"
else
  echo "vLLM could not be installed: engine=http check skipped"
fi
