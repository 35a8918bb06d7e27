#!/usr/bin/env bash
# The torch engine on a GPU in under five minutes: correctness checks, then prefill and decode
# throughput of Llama-3.1-8B-sized layers with random weights (8 of its 32 layers), each ending
# in a table; then (at most 8 more minutes) engine=http against vLLM on the same GPU. Run from the repository root on a machine with CUDA and the package installed:
#   bash benchmarks/gpu_check.sh
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/gpu_check.py
python benchmarks/torch_engine.py --device cuda --model llama3_1_8b --layers 8 --chunk 2048 --batch 32
python benchmarks/torch_engine.py --device cuda --model llama3_1_8b --layers 8 --chunk 8192 --batch 64
# 7. engine=http against a real vLLM server on this GPU (Llama-3.1-8B shape, random weights): measured
#    TTFT/TPOT and server cached tokens against the analytic and offload engines' predictions.
#    Needs vLLM (pip install vllm; a few minutes); set GPU_CHECK_HARDWARE to this GPU's conf/hardware option.
if python -c "import vllm" 2>/dev/null || pip install -q vllm; then
  timeout 480 python -m benchmarks.gpu_http --hardware "${GPU_CHECK_HARDWARE:-h100_sxm}"
else
  echo "vLLM could not be installed: engine=http check skipped"
fi
