"""Closed-form time of prefill, decode steps and KV loads: the one roofline every engine uses.

Prefill FLOPs: 2 x active params per new token (dense), plus attention: QK^T and AV each cost
2 x width per (query, key) pair per layer, and n new tokens after c cached ones make
n*c + n^2/2 causal pairs. A forward pass reads the (active) weights once and the cached KV,
and writes the new KV; time is the larger of compute (dense and attention FLOPs over their
derated peaks) and bytes over the derated bandwidth. A decode step of b sequences reads the
weights once and every sequence's KV. Each forward pass also pays the hardware's fixed
``overhead_s`` (0 on GPUs unless calibrated; large on a CPU).
"""

from __future__ import annotations

from engines.specs import HardwareSpec, ModelSpec, TierSpec


def attention_flops(model: ModelSpec, pairs: float) -> float:
    """QK^T and AV over ``pairs`` (query, key) pairs, every layer."""
    return 4.0 * model.layers * model.attention_width * pairs


def prefill_flops_split(model: ModelSpec, new_tokens: float, cached_tokens: float = 0) -> tuple[float, float]:
    """(dense, attention) FLOPs of prefilling ``new_tokens`` after ``cached_tokens``."""
    n, c = float(new_tokens), float(cached_tokens)
    return 2.0 * model.active_params * n, attention_flops(model, n * c + n * n / 2.0)


def prefill_flops(model: ModelSpec, new_tokens: float, cached_tokens: float = 0) -> float:
    return sum(prefill_flops_split(model, new_tokens, cached_tokens))


def prefill_bytes(model: ModelSpec, new_tokens: float, cached_tokens: float = 0) -> float:
    return model.active_weight_bytes + model.kv_bytes_per_token * (cached_tokens + new_tokens)


def decode_flops_split(model: ModelSpec, batch: int, context_tokens: float) -> tuple[float, float]:
    return batch * 2.0 * model.active_params, attention_flops(model, batch * context_tokens)


def decode_step_flops(model: ModelSpec, batch: int, context_tokens: float) -> float:
    return sum(decode_flops_split(model, batch, context_tokens))


def decode_step_bytes(model: ModelSpec, batch: int, context_tokens: float) -> float:
    return model.active_weight_bytes + batch * context_tokens * model.kv_bytes_per_token


class Roofline:
    """The formulas above against one instance's derated peaks (tp GPUs).

    Every formula is linear in three quantities: tokens through the dense layers, causal
    (query, key) pairs, and KV tokens read or written. So the constructor turns each into
    seconds once (from the formulas themselves) and every time is ``_seconds`` of those three.
    """

    def __init__(self, model: ModelSpec, hw: HardwareSpec, tp: int) -> None:
        self.model = model
        self.hw = hw
        self.dense_per_s = tp * hw.flops * hw.flops_efficiency
        self.attention_per_s = tp * hw.flops * hw.attention_efficiency
        self.bytes_per_s = tp * hw.hbm_bw * hw.hbm_efficiency
        dense_per_token, _ = prefill_flops_split(model, 1)
        weights = prefill_bytes(model, 0)
        self._token_s = dense_per_token / self.dense_per_s
        self._pair_s = attention_flops(model, 1) / self.attention_per_s
        self._weights_s = weights / self.bytes_per_s
        self._kv_token_s = (prefill_bytes(model, 1) - weights) / self.bytes_per_s
        self._overhead_s = hw.overhead_s

    def _seconds(self, tokens: float, pairs: float, kv_tokens: float) -> float:
        """One forward pass: the larger of compute and bytes, plus the fixed overhead."""
        compute = tokens * self._token_s + pairs * self._pair_s
        memory = self._weights_s + kv_tokens * self._kv_token_s
        return self._overhead_s + (compute if compute > memory else memory)

    def prefill_s(self, new_tokens: float, cached_tokens: float = 0) -> float:
        """Time to prefill ``new_tokens`` after ``cached_tokens``."""
        if new_tokens <= 0:
            return 0.0
        n, c = new_tokens, cached_tokens
        return self._seconds(n, n * c + n * n / 2.0, c + n)

    def decode_step_s(self, batch: int, context_tokens: float) -> float:
        """One decode step of ``batch`` sequences of ``context_tokens`` each."""
        batch = max(int(batch), 1)
        return self._seconds(batch, batch * context_tokens, batch * context_tokens)

    def step_s(self, prefill_chunks: list[tuple[int, int]], decode_batch: int = 0,
               decode_context_tokens: float = 0.0) -> float:
        """One iteration of continuous batching: prefill chunks (new tokens, tokens already in
        the sequence) and ``decode_batch`` sequences decoding one token each at a mean context
        of ``decode_context_tokens``; the weights are read once for the whole step."""
        tokens = pairs = kv_tokens = 0.0
        for n, c in prefill_chunks:
            tokens += n
            pairs += n * c + n * n / 2.0
            kv_tokens += c + n
        if decode_batch:
            tokens += decode_batch
            pairs += decode_batch * decode_context_tokens
            kv_tokens += decode_batch * decode_context_tokens
        if not tokens:
            return 0.0
        return self._seconds(tokens, pairs, kv_tokens)

    def load_s(self, tier: TierSpec, bytes_per_gpu: float) -> float:
        """Bring KV from ``tier`` into HBM: every GPU loads its own shard over its own link, in
        parallel with the others."""
        if bytes_per_gpu <= 0:
            return 0.0
        return tier.latency_s + bytes_per_gpu / (tier.read_bw * self.hw.link_efficiency)
