"""The KV-offload engine: discrete-event serving simulation with a tiered KV cache."""

from engines.offload.engine import OffloadEngine

__all__ = ["OffloadEngine"]
