"""Prefill/decode disaggregation: a prefill pool and a decode pool of offload-engine instances,
with the prompt's KV moved between them over the network (DistServe, Splitwise, Mooncake,
NVIDIA Dynamo, vLLM's P/D connectors).

A call goes to a prefill instance (the configured router: session affinity or prefix-cache
aware), which reuses what its own tiers hold and computes the rest of the prompt; that ends
its part (a one-token call there). Its KV, the whole context's (input tokens x the model's KV
bytes per token), is then pulled by the least-loaded decode instance once the call is admitted
there (its KV fits in HBM): the transfer crosses the prefill instance's NICs and the decode
instance's (``Fabric``, shared max-min fairly with the other transfers on them), so a lone
transfer of B bytes takes B / R + latency with R = min(tp_prefill, tp_decode) x NIC bandwidth
per GPU x efficiency. The decode instance then computes the last prompt position again for its
logits (one step, batched with its decodes) and emits the first token, so

    TTFT = prefill queue + prefill + decode queue + transfer + first decode step.

Where the KV lives afterwards: the prefill instance keeps the prompt's KV in its tiers (it
computed it), so the session's next call, routed back to it, reuses it; the output's KV stays
on the decode instance (evictable, never read there again: the next call is prefilled on the
prefill pool) and is not sent back, so the next call's prefill computes the previous output's
tokens again. ``layerwise_overlap`` sends each layer's KV while the next is computed: the
transfer left when the prefill ends is the last layer's share, or what the link could not
carry during the prefill if it is slower than compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from engines.base import Completion, Request
from engines.offload.engine import OffloadEngine
from engines.specs import ConfigError, ModelSpec, check_keys

EXTRA_COLUMNS = (
    ("prefill_instance", "int32"), ("decode_instance", "int32"),
    ("prefill_s", "double"),        # prefill admission to its end (loads of cached KV included)
    ("decode_queue_s", "double"),   # prefill end to admission on the decode instance (KV room)
    ("transfer_s", "double"),       # admission on the decode instance to the KV landed
    ("first_step_s", "double"),     # KV landed to the first token
    ("transfer_bytes", "double"),   # KV moved between the pools
    ("prefill_gpu_s", "double"), ("decode_gpu_s", "double"),
)


@dataclasses.dataclass(frozen=True)
class Link:
    """The network between the pools: each GPU's NIC bandwidth (bytes/s per direction), the
    share of it a KV transfer reaches, a fixed latency per transfer, and layer-wise overlap."""

    nic_bw: float
    efficiency: float
    latency_s: float
    layerwise_overlap: bool = False

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> Link:
        check_keys(cfg, ("nic_bw", "efficiency", "latency_s", "layerwise_overlap"), "deployment.link")
        try:
            link = cls(float(cfg["nic_bw"]), float(cfg.get("efficiency", 1.0)),
                       float(cfg.get("latency_s", 0.0)), bool(cfg.get("layerwise_overlap", False)))
        except KeyError as exc:
            raise ConfigError(f"deployment.link: '{exc.args[0]}' is missing") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"deployment.link: {exc}") from None
        if not link.nic_bw > 0 or not 0 < link.efficiency <= 1 or link.latency_s < 0:
            raise ConfigError("deployment.link: need nic_bw > 0, 0 < efficiency <= 1, latency_s >= 0")
        return link


class DisaggregatedEngine:
    """Two offload engines (the pools) on one clock, joined by a KV link. Every option of the
    offload engine applies to both pools, except that the decode pool routes least-loaded and
    does not prefetch (it reads no prefix from its tiers)."""

    def __init__(self, model: Mapping[str, Any], prefill: Mapping[str, Any], decode: Mapping[str, Any],
                 link: Mapping[str, Any], trace_block_size: int, **engine: Any) -> None:
        self.link = Link.from_cfg(link)
        self.model = ModelSpec.from_cfg(model)

        def pool(p: Mapping[str, Any], **extra: Any) -> OffloadEngine:
            return OffloadEngine(model, p["hardware"], p["cache"], int(p["tp"]), int(p["count"]),
                                 trace_block_size, **{**engine, **extra})

        self.prefill = pool(prefill)
        self.decode = pool(decode, router="least_loaded", prefetch=False)
        bw = self.link.nic_bw * self.link.efficiency
        self.decode.kv_link = (bw, self.link.latency_s)
        # the prefill side of the link: all of an instance's NICs (its GPUs send their shards)
        self._sources = [self.decode.fabric.resource(f"prefill{i}.kv_out", bw * self.prefill.tp)
                         for i in range(len(self.prefill.instances))]
        self.tier_names = self.prefill.tier_names
        self.priced_tiers = list(dict.fromkeys(self.prefill.tier_names + self.decode.tier_names))
        self.extra_columns = EXTRA_COLUMNS
        self._requests: dict[str, Request] = {}
        self._prefilled: dict[str, tuple[Completion, float]] = {}
        self.transfer_bytes = 0.0

    @property
    def rate(self) -> float:
        """A lone transfer's rate (bytes/s): the narrower side's NICs."""
        return self.link.nic_bw * self.link.efficiency * min(self.prefill.tp, self.decode.tp)

    def transfer_s(self, nbytes: float) -> float:
        """A lone transfer of ``nbytes``: B / R + latency."""
        return nbytes / self.rate + self.link.latency_s

    # -- the protocol -----------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> None:
        self._requests[request.request_id] = request
        self.prefill.submit(dataclasses.replace(request, output_tokens=1,
                                                output_blocks=np.empty(0, dtype=request.output_blocks.dtype)),
                            now)

    def expect(self, parent: Request, at: float) -> None:
        self.prefill.expect(parent, at)  # the next call's prefix is read on the prefill pool

    def next_event_time(self) -> float | None:
        times = [t for t in (self.prefill.next_event_time(), self.decode.next_event_time()) if t is not None]
        return min(times) if times else None

    def advance(self, until: float) -> list[Completion]:
        """Both pools in time order; a prefill that ends at t hands its call to the decode pool
        at t, after the decode pool's own events at t."""
        done: list[Completion] = []
        while True:
            t = self.next_event_time()
            if t is None or t > until:
                break
            prefilled = self.prefill.advance(t)
            done += [self._join(d) for d in self.decode.advance(t)]
            for p in prefilled:
                self._hand_off(p, t)
        return done

    def _hand_off(self, p: Completion, now: float) -> None:
        request = self._requests[p.request_id]
        nbytes = request.input_tokens * self.model.kv_bytes_per_token
        sent = nbytes
        if self.link.layerwise_overlap:  # layers sent while later ones were computed
            carried = self.rate * (p.first_token_s - p.start_s - p.load_s)
            sent = max(nbytes / self.model.layers, nbytes - carried)
        self._prefilled[p.request_id] = (p, nbytes)
        self.transfer_bytes += nbytes
        self.decode.receive(request, now, sent, self._sources[p.instance])

    def _join(self, d: Completion) -> Completion:
        """One row per call: the prefill pool's reuse and start, the decode pool's tokens."""
        p, nbytes = self._prefilled.pop(d.request_id)
        del self._requests[d.request_id]
        landed = d.start_s + d.load_s
        return Completion(
            request_id=d.request_id, instance=p.instance, start_s=p.start_s, first_token_s=d.first_token_s,
            finish_s=d.finish_s, reused_tokens_by_tier=p.reused_tokens_by_tier,
            prefilled_tokens=p.prefilled_tokens + d.prefilled_tokens,
            recomputed_tokens=p.recomputed_tokens + d.recomputed_tokens, loaded_bytes=p.loaded_bytes,
            gpu_s=p.gpu_s + d.gpu_s, load_s=p.load_s, preemptions=p.preemptions + d.preemptions,
            extra={"prefill_instance": p.instance, "decode_instance": d.instance,
                   "prefill_s": p.first_token_s - p.start_s, "decode_queue_s": d.start_s - p.finish_s,
                   "transfer_s": d.load_s, "first_step_s": d.first_token_s - landed,
                   "transfer_bytes": nbytes, "prefill_gpu_s": p.gpu_s, "decode_gpu_s": d.gpu_s})

    def stats(self) -> dict[str, Any]:
        p, d = self.prefill.stats(), self.decode.stats()
        timeline = p.pop("timeline")
        d.pop("timeline")
        byte_s, capacity = dict(p["byte_seconds_by_tier"]), dict(p["capacity_bytes_by_tier"])
        for tier, v in d["byte_seconds_by_tier"].items():  # KV held on either pool is paid for
            byte_s[tier] = byte_s.get(tier, 0.0) + v
        for tier, v in d["capacity_bytes_by_tier"].items():  # and each pool's tiers (its own warehouse too)
            mine = capacity.get(tier, 0.0)
            capacity[tier] = None if v is None or mine is None else mine + v  # (None: unbounded)
        return {**p, "byte_seconds_by_tier": byte_s, "capacity_bytes_by_tier": capacity, "timeline": timeline,
                "kv_transfer_bytes": self.transfer_bytes, "decode_pool": d}

    def check(self, final: bool = False) -> None:
        """Both pools' invariants (see ``OffloadEngine.check``)."""
        self.prefill.check(final)
        self.decode.check(final)
        assert not final or not (self._prefilled or self._requests), "calls left between the pools"
