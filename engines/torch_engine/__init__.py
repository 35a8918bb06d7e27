"""The torch engine: a real Llama-style model with a real paged KV cache (needs torch).

``TorchEngine`` is loaded on first use (PEP 562), so importing ``engines.torch_engine.calibrate``
to print ``replay-calibrate --help`` does not load torch.
"""

from typing import Any

__all__ = ["TorchEngine"]


def __getattr__(name: str) -> Any:
    if name == "TorchEngine":
        from engines.torch_engine.engine import TorchEngine

        return TorchEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
