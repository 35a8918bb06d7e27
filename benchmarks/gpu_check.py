"""Correctness of the torch engine's model on a GPU (bf16) against the CPU in float32, with a
cached prefix, batched decode and an offload round trip. Exits non-zero on a failure."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from engines.torch_engine.kv_pool import KVPool, TieredKV
from engines.torch_engine.model import ModelArgs, SeqSlice, Transformer

ARGS = ModelArgs(layers=2, hidden=256, heads=8, kv_heads=4, head_dim=32, intermediate=688, vocab=1024)


def build(device: str, dtype: torch.dtype) -> Transformer:
    model = Transformer(ARGS)
    model.init_random(0)
    return model.to(device, dtype).eval()


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    rows = []
    prompt = torch.randint(0, ARGS.vocab, (256,), generator=torch.Generator().manual_seed(0))
    cpu = build("cpu", torch.float32)
    pool_cpu = KVPool(ARGS, 8, 64, "cpu", torch.float32)
    ref = cpu(prompt, [SeqSlice(0, 256, 0, torch.arange(4))], pool_cpu.k, pool_cpu.v, 64)
    gpu = build("cuda", torch.bfloat16)
    pool = KVPool(ARGS, 16, 64, "cuda", torch.bfloat16)
    dev_prompt = prompt.cuda()
    full = gpu(dev_prompt, [SeqSlice(0, 256, 0, torch.arange(4, device="cuda"))], pool.k, pool.v, 64)
    err = float((full.float().cpu() - ref).abs().max() / ref.abs().max())
    rows.append(("bf16 GPU vs fp32 CPU logits, max rel err", err, err < 5e-2))
    gpu(dev_prompt[:128], [SeqSlice(0, 128, 0, torch.arange(8, 10, device="cuda"))], pool.k, pool.v, 64)
    slots = torch.tensor([8, 9, 10, 11], device="cuda")
    half = gpu(dev_prompt[128:], [SeqSlice(0, 128, 128, slots)], pool.k, pool.v, 64)
    err = float((half - full[128:]).float().abs().max() / full.float().abs().max())
    rows.append(("cached first half vs full prefill, max rel err", err, err < 2e-2))
    with tempfile.TemporaryDirectory() as tmp:
        kv = TieredKV(pool, Path(tmp))
        h = np.array([7], dtype=np.uint64)
        kv.move(h, None, 0)
        kv.place()
        slot = kv.slots[7]
        before = [t[slot].clone() for t in pool.k + pool.v]
        kv.move(h, 0, 1)
        kv.move(h, 1, 0)
        kv.place()
        same = all(torch.equal(b, t[kv.slots[7]]) for b, t in zip(before, pool.k + pool.v, strict=True))
        rows.append(("HBM -> pinned CPU -> HBM bit-identical", float(same), same))
    print(f"{'check':<50} {'value':>12}  ok")
    for name, value, ok in rows:
        print(f"{name:<50} {value:>12.3g}  {'yes' if ok else 'NO'}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
