"""Closed-form time of forward passes and KV loads: the one roofline every engine uses.

A forward pass is a sum of operators, each timed as max(FLOPs / derated compute, bytes /
derated bandwidth) on one GPU of the instance (every operator is sharded over the ``tp`` GPUs),
plus the tensor-parallel collectives and a fixed per-pass overhead (as Vidur, GenZ and
LLMCompass build a pass). The operators:

- ``qkv_o``: the attention projections (QKV and output; MLA: q_a, q_b, kv_a, kv_b, o) over
  every token of the pass; reads their weights once.
- ``mlp``: dense MLPs, shared experts, routers (and ``residual_params``) over every token.
- ``experts``: routed experts. FLOPs follow top-k per token; bytes follow the distinct experts
  the pass touches, E (1 - (1 - k/E)^T) per MoE layer for T tokens.
- ``lm_head``: only at the positions that sample (one per prefill chunk, one per decoding
  sequence): servers compute logits only there.
- ``prefill_attention``: 2 x 2 x heads x head width per causal (query, key) pair (QK^T and AV;
  MLA runs prefill as plain multi-head attention over keys up-projected from the latent, so the
  cached tokens' latent also goes through kv_b); reads the cached KV and writes the new.
- ``decode_attention``: per (sequence, context token) pair; reads every sequence's KV. MLA
  decode runs absorbed: QK over the 576-wide latent+rope and AV over the 512-wide latent per
  head; every tensor-parallel rank reads the whole latent (unless attention is data-parallel).
- ``collectives``: two all-reduces per layer (after attention and after the MLP), ring:
  latency + 2 (tp - 1) / tp x activation bytes over the NVLink bandwidth; with expert
  parallelism the MoE layers' all-reduce becomes an all-to-all dispatch and combine. Added to
  the operators unless the hardware says collectives overlap compute.

A continuous-batching step (prefill chunks and decoding sequences) runs the projections, MLP
and experts once over all its tokens (one GEMM, weights read once), and the prefill attention
and the decode attention each as their own operator: the decode KV reads never hide under the
prefill GEMMs. Embedding lookups and activation traffic of the GEMMs are left out (a few MB).
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.specs import ConfigError, HardwareSpec, ModelSpec, TierSpec

ACTIVATION_BYTES = 2.0  # bf16 activations between layers (what the all-reduces move)


@dataclass(frozen=True)
class Op:
    """One operator of a pass on one GPU: its FLOPs, bytes and time."""

    name: str
    flops: float  # per GPU
    bytes: float  # per GPU
    seconds: float


# -- FLOP and byte counts of the whole instance (all GPUs), for tests and calibration ----------
def prefill_pair_flops(model: ModelSpec) -> float:
    """FLOPs of one causal (query, key) pair over all layers in prefill: QK^T and AV."""
    return 2.0 * model.layers * model.heads * (model.qk_head_dim + model.v_dim)


def decode_pair_flops(model: ModelSpec) -> float:
    """FLOPs of one (sequence, context token) pair over all layers in decode. MLA runs absorbed:
    QK over the latent plus rope part, AV over the latent, for every head."""
    if model.attention == "mla":
        latent = model.kv_lora_rank
        return 2.0 * model.layers * model.heads * (latent + model.qk_rope_head_dim + latent)
    return prefill_pair_flops(model)


def attention_flops(model: ModelSpec, pairs: float) -> float:
    """QK^T and AV over ``pairs`` prefill (query, key) pairs, every layer."""
    return prefill_pair_flops(model) * pairs


def linear_flops(model: ModelSpec, tokens: float, sampled: float) -> float:
    """Projections, MLPs, routed experts (top-k each) of ``tokens`` tokens, lm_head at
    ``sampled`` positions."""
    per_token = model.layers * model.attention_params + model.mlp_params + model.residual_params \
        + model.moe_layers * model.experts_per_token * model.expert_params
    return 2.0 * (per_token * tokens + model.lm_head_params * sampled)


def weight_bytes_read(model: ModelSpec, tokens: float, sampled: float = 1) -> float:
    """Weight bytes a pass of ``tokens`` tokens reads (all GPUs): dense weights once, the
    distinct experts its tokens touch, the lm_head if anything samples."""
    dense = model.layers * model.attention_params + model.mlp_params + model.residual_params
    experts = model.moe_layers * model.distinct_experts(tokens) * model.expert_params
    head = model.lm_head_params if sampled else 0.0
    return (dense + experts + head) * model.weight_dtype_bytes


def prefill_flops_split(model: ModelSpec, new_tokens: float, cached_tokens: float = 0) -> tuple[float, float]:
    """(linear, attention) FLOPs of prefilling ``new_tokens`` after ``cached_tokens`` (one
    sampled position). MLA's attention part includes up-projecting the cached latent."""
    n, c = float(new_tokens), float(cached_tokens)
    attention = attention_flops(model, n * c + n * n / 2.0) + 2.0 * model.layers * model.kv_up_params * c
    return linear_flops(model, n, 1 if n else 0), attention


def prefill_flops(model: ModelSpec, new_tokens: float, cached_tokens: float = 0) -> float:
    return sum(prefill_flops_split(model, new_tokens, cached_tokens))


def prefill_bytes(model: ModelSpec, new_tokens: float, cached_tokens: float = 0) -> float:
    return weight_bytes_read(model, new_tokens) + model.kv_bytes_per_token * (cached_tokens + new_tokens)


def decode_flops_split(model: ModelSpec, batch: int, context_tokens: float) -> tuple[float, float]:
    return linear_flops(model, batch, batch), decode_pair_flops(model) * batch * context_tokens


def decode_step_flops(model: ModelSpec, batch: int, context_tokens: float) -> float:
    return sum(decode_flops_split(model, batch, context_tokens))


def decode_step_bytes(model: ModelSpec, batch: int, context_tokens: float) -> float:
    return weight_bytes_read(model, batch, batch) + batch * context_tokens * model.kv_bytes_per_token


class Roofline:
    """The operators above against one instance's derated peaks (tp GPUs).

    Every operator's FLOPs and bytes are linear in a few counts (tokens, sampled positions,
    prefill pairs, decode pairs, KV tokens; distinct experts for MoE), so the constructor turns
    each into seconds per unit once and a pass costs a handful of multiply-adds and maxes.
    """

    def __init__(self, model: ModelSpec, hw: HardwareSpec, tp: int) -> None:
        self.model, self.hw, self.tp = model, hw, tp
        m = model
        wb, tp_f = m.weight_dtype_bytes, float(tp)
        gemm = hw.peak(m.weight_dtype) * hw.flops_efficiency  # per GPU
        attn = hw.peak(m.kv_dtype) * hw.attention_efficiency
        bw = hw.hbm_bw * hw.hbm_efficiency
        self.dense_per_s = tp * gemm  # instance figures, kept for callers and reports
        self.attention_per_s = tp * attn
        self.bytes_per_s = tp * bw
        # per GPU, per unit: (seconds of compute, seconds of bytes)
        proj = m.layers * m.attention_params
        if m.dp_attention:  # each GPU runs all heads on its share of the tokens: weights replicated
            self._proj = (2.0 * proj / (tp_f * gemm), proj * wb / bw)
        else:
            self._proj = (2.0 * proj / (tp_f * gemm), proj * wb / (tp_f * bw))
        mlp = m.mlp_params + m.residual_params
        self._mlp = (2.0 * mlp / (tp_f * gemm), mlp * wb / (tp_f * bw))
        head = m.lm_head_params
        self._head = (2.0 * head / (tp_f * gemm), head * wb / (tp_f * bw))
        self._expert_flop_s = 2.0 * m.moe_layers * m.experts_per_token * m.expert_params / (tp_f * gemm)
        self._expert_byte_s = m.moe_layers * m.expert_params * wb / (tp_f * bw)  # per distinct expert
        self._prefill_pair_s = prefill_pair_flops(m) / (tp_f * attn)
        self._kv_up_s = 2.0 * m.layers * m.kv_up_params / (tp_f * attn)  # MLA prefill, per cached token
        self._decode_pair_s = decode_pair_flops(m) / (tp_f * attn)
        self._kv_token_s = m.kv_bytes_per_token_per_gpu(tp) / bw
        # collectives per token and per pass
        self._coll_token_s = self._coll_fixed_s = 0.0
        if tp > 1:
            link = hw.links.get("nvlink", 0.0) * hw.collective_efficiency
            if link <= 0:
                raise ConfigError(f"hardware {hw.name}: tp={tp} needs links.nvlink")
            ring = 2.0 * (tp - 1) / tp * m.hidden * ACTIVATION_BYTES / link  # one all-reduce, per token
            a2a = (tp - 1) / tp * m.experts_per_token * m.hidden * ACTIVATION_BYTES / (tp * link)
            moe = m.moe_layers if m.expert_parallel else 0
            attn_reduces = 0 if m.dp_attention else m.layers
            self._coll_token_s = attn_reduces * ring + (m.layers - moe) * ring + moe * 2 * a2a
            self._coll_fixed_s = (attn_reduces + m.layers - moe + 2 * moe) * hw.collective_latency_s
        self._overhead_s = hw.pass_overhead_s
        self._overlap = hw.overlap_collectives

    # -- the pass -----------------------------------------------------------------------------
    def _pass_s(self, tokens: float, sampled: float, prefill_pairs: float, prefill_cached: float,
                prefill_kv: float, decode_pairs: float) -> float:
        """One forward pass: ``tokens`` through the GEMMs, logits at ``sampled`` positions,
        prefill attention (pairs, cached tokens up-projected, KV tokens read or written) and
        decode attention (pairs = KV tokens read)."""
        fc, bc = self._proj
        t = fc * tokens if fc * tokens > bc else bc
        fc, bc = self._mlp
        t += fc * tokens if fc * tokens > bc else bc
        if sampled:
            fc, bc = self._head
            t += fc * sampled if fc * sampled > bc else bc
        if self._expert_flop_s:
            fc = self._expert_flop_s * tokens
            bc = self._expert_byte_s * self.model.distinct_experts(tokens)
            t += fc if fc > bc else bc
        if prefill_kv:
            fc = self._prefill_pair_s * prefill_pairs + self._kv_up_s * prefill_cached
            bc = self._kv_token_s * prefill_kv
            t += fc if fc > bc else bc
        if decode_pairs:
            fc = self._decode_pair_s * decode_pairs
            bc = self._kv_token_s * decode_pairs
            t += fc if fc > bc else bc
        comm = self._coll_fixed_s + self._coll_token_s * tokens if self._coll_token_s else 0.0
        if self._overlap:
            return self._overhead_s + (t if t > comm else comm)
        return self._overhead_s + t + comm

    def prefill_s(self, new_tokens: float, cached_tokens: float = 0) -> float:
        """Time to prefill ``new_tokens`` after ``cached_tokens`` (one pass, one sampled position)."""
        if new_tokens <= 0:
            return 0.0
        n, c = new_tokens, cached_tokens
        return self._pass_s(n, 1, n * c + n * n / 2.0, c, c + n, 0.0)

    def decode_step_s(self, batch: int, context_tokens: float) -> float:
        """One decode step of ``batch`` sequences of ``context_tokens`` each."""
        batch = max(int(batch), 1)
        return self._pass_s(batch, batch, 0.0, 0.0, 0.0, batch * context_tokens)

    def step_s(self, prefill_chunks: list[tuple[int, int]], decode_batch: int = 0,
               decode_context_tokens: float = 0.0) -> float:
        """One iteration of continuous batching: prefill chunks (new tokens, tokens already in
        the sequence) and ``decode_batch`` sequences decoding one token each at a mean context
        of ``decode_context_tokens``. The GEMMs run once over all tokens; prefill attention and
        decode attention are each their own operator (see the module docstring)."""
        tokens = pairs = cached = kv = 0.0
        for n, c in prefill_chunks:
            tokens += n
            pairs += n * c + n * n / 2.0
            cached += c
            kv += c + n
        if not tokens and not decode_batch:
            return 0.0
        return self._pass_s(tokens + decode_batch, len(prefill_chunks) + decode_batch, pairs, cached, kv,
                            decode_batch * decode_context_tokens)

    def decode_in_chunk_s(self, chunk: int, cached: int, batch: int, context_tokens: float) -> float:
        """What ``batch`` sequences decoding at a mean context of ``context_tokens`` add to a step
        that prefills ``chunk`` tokens after ``cached``: ``step_s([(chunk, cached)], batch,
        context_tokens) - step_s([(chunk, cached)])``, with no chunk lists built (the analytic
        engine asks this for every prefill)."""
        pairs, kv = chunk * cached + chunk * chunk / 2.0, cached + chunk
        return (self._pass_s(chunk + batch, 1 + batch, pairs, cached, kv, batch * context_tokens)
                - self._pass_s(chunk, 1, pairs, cached, kv, 0.0))

    def operators(self, prefill_chunks: list[tuple[int, int]], decode_batch: int = 0,
                  decode_context_tokens: float = 0.0) -> list[Op]:
        """The operators of a step with their per-GPU FLOPs, bytes and times (what ``step_s``
        sums), for reports and tests. Works from the counts, not from ``_pass_s``'s constants."""
        m, hw, tp = self.model, self.hw, self.tp
        gemm = hw.peak(m.weight_dtype) * hw.flops_efficiency
        attn = hw.peak(m.kv_dtype) * hw.attention_efficiency
        bw = hw.hbm_bw * hw.hbm_efficiency
        wb = m.weight_dtype_bytes
        tokens = sum(n for n, _ in prefill_chunks) + decode_batch
        sampled = len(prefill_chunks) + decode_batch
        pairs = sum(n * c + n * n / 2.0 for n, c in prefill_chunks)
        cached = sum(c for _, c in prefill_chunks)
        kv = sum(c + n for n, c in prefill_chunks)
        dpairs = decode_batch * decode_context_tokens
        proj = m.layers * m.attention_params
        mlp = m.mlp_params + m.residual_params
        ops = [("qkv_o", 2 * proj * tokens / tp, proj * wb / (1 if m.dp_attention else tp), gemm),
               ("mlp", 2 * mlp * tokens / tp, mlp * wb / tp, gemm)]
        if sampled:
            ops.append(("lm_head", 2 * m.lm_head_params * sampled / tp, m.lm_head_params * wb / tp, gemm))
        if m.experts:
            ops.append(("experts", 2 * m.moe_layers * m.experts_per_token * m.expert_params * tokens / tp,
                        m.moe_layers * m.distinct_experts(tokens) * m.expert_params * wb / tp, gemm))
        if kv:
            ops.append(("prefill_attention",
                        (prefill_pair_flops(m) * pairs + 2 * m.layers * m.kv_up_params * cached) / tp,
                        kv * m.kv_bytes_per_token_per_gpu(tp), attn))
        if dpairs:
            ops.append(("decode_attention", decode_pair_flops(m) * dpairs / tp,
                        dpairs * m.kv_bytes_per_token_per_gpu(tp), attn))
        out = [Op(name, f, b, max(f / rate, b / bw)) for name, f, b, rate in ops]
        comm = self._coll_fixed_s + self._coll_token_s * tokens
        if comm:
            out.append(Op("collectives", 0.0, 0.0, comm))
        return out

    def load_s(self, tier: TierSpec, bytes_per_gpu: float) -> float:
        """Bring KV from ``tier`` into HBM: every GPU loads its own shard over its own link, in
        parallel with the others."""
        if bytes_per_gpu <= 0:
            return 0.0
        return tier.latency_s + bytes_per_gpu / (tier.read_bw * self.hw.link_efficiency)
