"""Prefill and decode speed of the torch engine's model beside a plain matmul in the same run.

Target on a 2-core CPU: prefill of 2k-token chunks reaches >= 40% of the matmul FLOP/s.
On a GPU, ``--hardware NAME`` (a conf/hardware option) sets the measurements beside what the
roofline assumes for that GPU: the model's largest GEMM as a share of the dense peak (the
roofline's fitted GEMM efficiency), a device copy as a share of HBM bandwidth (its fitted HBM
efficiency), and the roofline's prefill and decode times for the same shapes without CUDA graphs
(this model runs eager: no fused kernels, no graphs, so it is expected to be slower than the
roofline, which is fitted to vLLM and TensorRT-LLM).
Usage: python -m benchmarks.torch_engine [--device cpu|cuda] [--layers 4] [--hidden 1024]
                                         [--model llama3_1_8b] [--hardware h100_sxm]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import common
from engines.roofline import Roofline, decode_step_flops, prefill_flops
from engines.specs import HardwareSpec, ModelSpec
from engines.torch_engine.engine import Timer
from engines.torch_engine.kv_pool import KVPool
from engines.torch_engine.model import ModelArgs, SeqSlice, Transformer


def model_cfg(layers: int, hidden: int) -> dict:
    heads = hidden // 64
    inter = int(hidden * 2.75) // 64 * 64
    vocab = 4096
    params = 2 * vocab * hidden + layers * (2 * hidden * hidden + 2 * hidden * (heads // 2) * 64
                                            + 3 * hidden * inter + 2 * hidden) + hidden
    return {"name": f"bench{layers}x{hidden}", "layers": layers, "hidden": hidden, "heads": heads,
            "kv_heads": heads // 2, "head_dim": 64, "intermediate": inter, "vocab": vocab,
            "params": params, "active_params": params, "kv_dtype_bytes": 4, "weight_dtype_bytes": 4,
            "attention": "gqa"}


def timed(fn, device: str, repeats: int) -> float:
    """Best of ``repeats`` after a warm-up: the rate the hardware can reach, noise aside."""
    fn()
    times = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        times.append(t.seconds)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--model", help="a conf/model name instead (e.g. llama3_1_8b), cut to --layers")
    parser.add_argument("--hardware", help="a conf/hardware name: compare with the roofline's assumptions")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    cfg = model_cfg(args.layers, args.hidden)
    if args.model:
        from importlib import resources

        from omegaconf import OmegaConf

        text = resources.files("conf").joinpath("model", f"{args.model}.yaml").read_text()
        cfg = OmegaConf.to_container(OmegaConf.create(text))
        per_layer = (cfg["active_params"] - 2 * cfg["vocab"] * cfg["hidden"]) / cfg["layers"]
        cfg["params"] = cfg["active_params"] = 2 * cfg["vocab"] * cfg["hidden"] + per_layer * args.layers
        cfg["layers"], cfg["name"] = args.layers, f"{args.model}[{args.layers} layers]"
        cfg["kv_dtype_bytes"] = cfg["weight_dtype_bytes"] = 2 if device.startswith("cuda") else 4
    spec = ModelSpec.from_cfg(cfg)
    model = Transformer(ModelArgs.from_model_cfg(cfg))
    model.init_random(0)
    model = model.to(device, dtype).eval()
    bs = 64
    per_seq = (args.chunk * 2) // bs
    pool = KVPool(model.a, per_seq * (args.batch + 1), bs, device, dtype)

    inter = cfg["intermediate"]  # the model's own largest matmul shape
    hidden = cfg["hidden"]
    a = torch.randn(args.chunk, hidden, device=device, dtype=dtype)
    w = torch.randn(hidden, inter, device=device, dtype=dtype)
    out = torch.empty(args.chunk, inter, device=device, dtype=dtype)
    matmul_s = timed(lambda: torch.mm(a, w, out=out), device, args.repeats * 5)
    matmul_flops = 2 * args.chunk * hidden * inter / matmul_s

    vocab = cfg["vocab"]
    tokens = torch.randint(0, vocab, (args.chunk,), device=device)
    slots = torch.arange(per_seq, device=device)
    prefill_s = timed(lambda: model(tokens, [SeqSlice(0, args.chunk, 0, slots)], pool.k, pool.v, bs),
                      device, args.repeats)
    prefill_flops_s = prefill_flops(spec, args.chunk) / prefill_s

    context = args.chunk
    for i in range(args.batch):  # fill each sequence's KV, then time batched decode steps
        model(tokens, [SeqSlice(0, context, 0, torch.arange(i * per_seq, (i + 1) * per_seq, device=device))],
              pool.k, pool.v, bs)
    step_tokens = torch.randint(0, vocab, (args.batch,), device=device)
    seqs = [SeqSlice(i, 1, context, torch.arange(i * per_seq, (i + 1) * per_seq, device=device))
            for i in range(args.batch)]
    decode_s = timed(lambda: model(step_tokens, seqs, pool.k, pool.v, bs), device, args.repeats * 3)

    figures = {
        "device": device,
        "params_m": round(spec.params / 1e6, 1),
        "matmul_gflop_per_s": round(matmul_flops / 1e9, 1),
        "prefill_chunk_tokens": args.chunk,
        "prefill_tokens_per_s": round(args.chunk / prefill_s, 1),
        "prefill_gflop_per_s": round(prefill_flops_s / 1e9, 1),
        "prefill_share_of_matmul": round(prefill_flops_s / matmul_flops, 3),
        "decode_batch": args.batch,
        "decode_context_tokens": context,
        "decode_tokens_per_s": round(args.batch / decode_s, 1),
        "decode_gflop_per_s": round(
            decode_step_flops(spec, args.batch, context) / decode_s / 1e9, 2),
    }
    if args.hardware:
        figures.update(against_roofline(spec, args.hardware, matmul_flops, prefill_s, decode_s, args, device))
    common.report(f"torch engine model {cfg['name']} ({spec.params / 1e6:.0f}M params) on {device}, "
                  f"{torch.get_num_threads()} threads", figures)


def against_roofline(spec: ModelSpec, hardware: str, matmul_flops: float, prefill_s: float,
                     decode_s: float, args: argparse.Namespace, device: str) -> dict[str, float]:
    """The measurements as shares of the peaks, beside the roofline's fitted efficiencies and its
    eager-mode times for the same chunk and decode batch at tp=1."""
    from importlib import resources

    from omegaconf import OmegaConf

    text = resources.files("conf").joinpath("hardware", f"{hardware}.yaml").read_text()
    hw_cfg = OmegaConf.to_container(OmegaConf.create(text))
    hw_cfg["cuda_graphs"] = False
    hw = HardwareSpec.from_cfg(hw_cfg)
    roof = Roofline(spec, hw, 1)
    src = torch.empty(2**28, dtype=torch.uint8, device=device)  # 256 MiB, far past any cache
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), device, args.repeats * 5)
    return {
        "hardware": hardware,
        "matmul_share_of_peak": round(matmul_flops / hw.flops, 3),
        "roofline_gemm_efficiency": hw.flops_efficiency,
        "copy_share_of_hbm_bw": round(2 * src.numel() / copy_s / hw.hbm_bw, 3),  # read + write
        "roofline_hbm_efficiency": hw.hbm_efficiency,
        "roofline_prefill_s": round(roof.prefill_s(args.chunk), 5),
        "measured_prefill_s": round(prefill_s, 5),
        "prefill_measured_over_roofline": round(prefill_s / roof.prefill_s(args.chunk), 2),
        "roofline_decode_step_s": round(roof.decode_step_s(args.batch, args.chunk), 5),
        "measured_decode_step_s": round(decode_s, 5),
        "decode_measured_over_roofline": round(decode_s / roof.decode_step_s(args.batch, args.chunk), 2),
    }


if __name__ == "__main__":
    main()
