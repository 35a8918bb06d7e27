#!/usr/bin/env bash
# The torch engine on a GPU in under five minutes: correctness checks, then prefill and decode
# throughput of Llama-3.1-8B-sized layers with random weights (8 of its 32 layers), each ending
# in a table. Run from the repository root on a machine with CUDA and the package installed:
#   bash benchmarks/gpu_check.sh
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/gpu_check.py
python benchmarks/torch_engine.py --device cuda --model llama3_1_8b --layers 8 --chunk 2048 --batch 32
python benchmarks/torch_engine.py --device cuda --model llama3_1_8b --layers 8 --chunk 8192 --batch 64
