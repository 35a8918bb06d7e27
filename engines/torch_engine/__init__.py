"""The torch engine: a real Llama-style model with a real paged KV cache (needs torch)."""

from engines.torch_engine.engine import TorchEngine

__all__ = ["TorchEngine"]
