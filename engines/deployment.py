"""What every engine is built from, checked and derived once: the model, the hardware, tensor
parallelism, the KV tiers and the block geometry."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.base import Request
from engines.roofline import Roofline
from engines.specs import ConfigError, HardwareSpec, ModelSpec, TierSpec, tiers_from_cfg
from traces.hashing import reblock


def engine_block_size(block_size: int | None, trace_block_size: int) -> tuple[int, int]:
    """(engine block size, how many trace blocks make one); it must be a multiple."""
    bs = int(block_size or trace_block_size)
    if bs % trace_block_size:
        raise ConfigError(f"engine.block_size {bs} must be a multiple of the trace's block size "
                          f"{trace_block_size}")
    return bs, bs // trace_block_size


@dataclass(frozen=True)
class Deployment:
    model: ModelSpec
    hw: HardwareSpec
    tp: int
    instances: int
    roofline: Roofline
    tiers: list[TierSpec]
    block_size: int
    factor: int

    @classmethod
    def build(cls, model: Mapping[str, Any], hardware: Mapping[str, Any], cache: Mapping[str, Any],
              tp: int, instances: int, trace_block_size: int, block_size: int | None) -> Deployment:
        m, hw = ModelSpec.from_cfg(model), HardwareSpec.from_cfg(hardware)
        if int(tp) < 1 or int(instances) < 1:
            raise ConfigError("parallel.tp and instances must be >= 1")
        bs, factor = engine_block_size(block_size, trace_block_size)
        return cls(m, hw, int(tp), int(instances), Roofline(m, hw, int(tp)),
                   tiers_from_cfg(cache, m, hw, int(tp)), bs, factor)

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @property
    def kv_bytes_per_gpu_token(self) -> float:
        return self.model.kv_bytes_per_token_per_gpu(self.tp)

    @property
    def block_bytes(self) -> float:
        """KV bytes of one block across the instance's GPUs."""
        return self.kv_bytes_per_gpu_token * self.tp * self.block_size

    def capacity_bytes_by_tier(self) -> dict[str, float | None]:
        """Each tier's KV capacity over the whole deployment (a shared tier counted once; None:
        unbounded): what a tier bought with the deployment costs, full or not
        (``SelfHostedPricing``)."""
        return {t.name: t.capacity_bytes * (1 if t.shared else self.instances)
                if math.isfinite(t.capacity_bytes) else None for t in self.tiers}

    def blocks(self, hashes: np.ndarray) -> np.ndarray:
        """A block list at the trace's block size, at the engine's."""
        return reblock(hashes, self.factor) if self.factor > 1 else hashes

    def output_blocks(self, request: Request) -> np.ndarray:
        """At the engine's block size, the blocks a call's output completes after its prompt."""
        f, prompt = self.factor, len(request.blocks)
        if f == 1:
            return request.output_blocks
        first = (prompt // f + 1) * f - 1 - prompt  # the first big block after the prompt's ends here
        return request.output_blocks[first::f]
