"""A Llama-style decoder in plain PyTorch (RMSNorm, RoPE, grouped-query attention through
scaled_dot_product_attention, SwiGLU), reading and writing a paged KV cache.

Sized by a conf/model yaml (or a Hugging Face config.json); weights are random from a seed or
loaded from a local Llama or Qwen2 safetensors checkpoint (Qwen2 adds q/k/v biases). Nothing is
downloaded. float32 on the CPU, bf16 on CUDA.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention.bias import causal_lower_right

from engines.specs import ModelSpec


@dataclass(frozen=True)
class ModelArgs:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False

    @classmethod
    def from_model_cfg(cls, cfg: Mapping[str, Any]) -> ModelArgs:
        """From a conf/model yaml: the shape as ``ModelSpec`` reads (and checks) it, plus the
        knobs only a real forward pass needs."""
        m = ModelSpec.from_cfg(cfg)
        return cls(m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.intermediate, m.vocab,
                   float(cfg.get("rope_theta", 10000.0)), float(cfg.get("norm_eps", 1e-5)),
                   bool(cfg.get("qkv_bias", False)), bool(cfg.get("tie_embeddings", False)))

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> ModelArgs:
        kind = cfg.get("model_type", "llama")
        if kind not in ("llama", "qwen2"):
            raise ValueError(f"model_type {kind!r}: only llama and qwen2 checkpoints are supported")
        if cfg.get("rope_scaling"):
            raise ValueError("rope_scaling is not supported yet (Llama 3.1's long-context scaling)")
        heads = int(cfg["num_attention_heads"])
        return cls(int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), heads,
                   int(cfg.get("num_key_value_heads", heads)),
                   int(cfg.get("head_dim") or cfg["hidden_size"] // heads), int(cfg["intermediate_size"]),
                   int(cfg["vocab_size"]), float(cfg.get("rope_theta", 10000.0)),
                   float(cfg.get("rms_norm_eps", 1e-6)), kind == "qwen2",
                   bool(cfg.get("tie_word_embeddings", False)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding, rotate-half convention (as Hugging Face Llama and Qwen2): x is
    [tokens, heads, head_dim], positions [tokens]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    angles = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos()[:, None, :].to(x.dtype), emb.sin()[:, None, :].to(x.dtype)
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.a = a
        self.q_proj = nn.Linear(a.hidden, a.heads * a.head_dim, bias=a.qkv_bias)
        self.k_proj = nn.Linear(a.hidden, a.kv_heads * a.head_dim, bias=a.qkv_bias)
        self.v_proj = nn.Linear(a.hidden, a.kv_heads * a.head_dim, bias=a.qkv_bias)
        self.o_proj = nn.Linear(a.heads * a.head_dim, a.hidden, bias=False)


class MLP(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
        self.up_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
        self.down_proj = nn.Linear(a.intermediate, a.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.self_attn = Attention(a)
        self.mlp = MLP(a)
        self.input_layernorm = RMSNorm(a.hidden, a.norm_eps)
        self.post_attention_layernorm = RMSNorm(a.hidden, a.norm_eps)


@dataclass
class SeqSlice:
    """One sequence's part of a forward pass: its new tokens are rows [start, start + n) of the
    batch, at positions [context, context + n), and its KV lives in ``slots`` (pool block ids
    covering positions 0 .. context + n)."""

    start: int
    n: int
    context: int
    slots: torch.Tensor


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.a = a
        self.embed_tokens = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList(Layer(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.hidden, a.norm_eps)
        self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)

    def init_random(self, seed: int) -> None:
        """Reproducible random weights (std 0.02, norms at 1)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "norm.weight":
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, seqs: list[SeqSlice], k_cache: list[torch.Tensor],
                v_cache: list[torch.Tensor], block_size: int) -> torch.Tensor:
        """Logits of every new token; writes the new tokens' K and V into the pool.

        ``tokens`` holds the new tokens of all sequences, concatenated; each sequence attends to
        its cached context (read from its blocks) and causally to its own new tokens.
        """
        a = self.a
        positions = torch.cat([torch.arange(s.context, s.context + s.n, device=tokens.device) for s in seqs])
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = rope(att.q_proj(h).view(-1, a.heads, a.head_dim), positions, a.rope_theta)
            k = rope(att.k_proj(h).view(-1, a.kv_heads, a.head_dim), positions, a.rope_theta)
            v = att.v_proj(h).view(-1, a.kv_heads, a.head_dim)
            out = torch.empty_like(q)
            for s in seqs:
                rows = slice(s.start, s.start + s.n)
                write_kv(k_cache[i], v_cache[i], s, k[rows], v[rows], block_size)
                keys, values = read_kv(k_cache[i], v_cache[i], s, block_size)
                out[rows] = attend(q[rows], keys, values, s.context, a.heads // a.kv_heads)
            x = x + att.o_proj(out.reshape(-1, a.heads * a.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x))


def write_kv(kc: torch.Tensor, vc: torch.Tensor, s: SeqSlice, k: torch.Tensor, v: torch.Tensor,
             block_size: int) -> None:
    pos = torch.arange(s.context, s.context + s.n, device=k.device)
    blocks = s.slots[pos // block_size]
    kc[blocks, pos % block_size] = k
    vc[blocks, pos % block_size] = v


def read_kv(kc: torch.Tensor, vc: torch.Tensor, s: SeqSlice,
            block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    total = s.context + s.n
    n_blocks = math.ceil(total / block_size)
    blocks = s.slots[:n_blocks]
    keys = kc[blocks].reshape(-1, kc.shape[-2], kc.shape[-1])[:total]
    values = vc[blocks].reshape(-1, vc.shape[-2], vc.shape[-1])[:total]
    return keys, values


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, context: int,
           groups: int) -> torch.Tensor:
    """q [n, heads, d] against keys/values [context + n, kv_heads, d], causal past the context.

    A fresh prompt uses SDPA's fused causal kernel; a chunk after cached context uses a
    lower-right causal bias, which SDPA also runs without materialising the mask.
    """
    n, total = q.shape[0], keys.shape[0]
    # [1, heads, tokens, d] with expanded K/V heads: SDPA's fused CPU kernel wants 4-D inputs
    # and does not take grouped heads (enable_gqa)
    q = q.transpose(0, 1)[None]
    keys = keys.transpose(0, 1).repeat_interleave(groups, dim=0)[None]
    values = values.transpose(0, 1).repeat_interleave(groups, dim=0)[None]
    if n == 1:
        out = F.scaled_dot_product_attention(q, keys, values)
    elif context == 0:
        out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=causal_lower_right(n, total))
    return out[0].transpose(0, 1)


def load_hf_checkpoint(folder: str | Path, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> Transformer:
    """A Llama or Qwen2 checkpoint from a local Hugging Face folder (config.json, *.safetensors)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder}: no config.json (a Hugging Face model folder is needed)")
    args = ModelArgs.from_hf_config(json.loads(cfg_path.read_text()))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    model = Transformer(args)
    mapped = {k.removeprefix("model."): v for k, v in state.items()}
    if "lm_head.weight" not in mapped:
        mapped["lm_head.weight"] = mapped["embed_tokens.weight"]  # tied embeddings
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing:
        raise ValueError(f"{folder}: checkpoint lacks {missing[:5]}")
    return model.to(device=device, dtype=dtype)
