"""The analytic engine: a closed-form roofline per call with the shared prefix cache.

Each call takes one of an instance's ``concurrency`` slots in FCFS order. Its TTFT is the wait
for a slot, the load of cached KV from lower tiers over their links, and the prefill of the
uncached tokens; its decode runs at the step time of a batch of ``concurrency`` sequences.
No batching interplay beyond that: fast enough for millions of calls.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from typing import Any

from engines.base import Completion, Request
from engines.deployment import Deployment
from engines.kv_cache import Acquired, BlockCache, tier_report
from engines.router import Router
from engines.specs import ConfigError
from traces.hashing import reusable_blocks


class AnalyticEngine:
    def __init__(self, model: Mapping[str, Any], hardware: Mapping[str, Any], cache: Mapping[str, Any],
                 tp: int, instances: int, trace_block_size: int, concurrency: int = 16,
                 block_size: int | None = None, cache_output_blocks: bool = True,
                 overlap_load: bool = False, router: str = "session_affinity") -> None:
        if int(concurrency) < 1:
            raise ConfigError("engine.concurrency must be >= 1")
        d = self.deployment = Deployment.build(model, hardware, cache, tp, instances, trace_block_size,
                                               block_size)
        self.model, self.hw, self.tp, self.roofline, self.tiers = d.model, d.hw, d.tp, d.roofline, d.tiers
        self.tier_names, self.block_size = d.tier_names, d.block_size
        self.concurrency = int(concurrency)
        self.cache_output_blocks = bool(cache_output_blocks)
        self.overlap_load = bool(overlap_load)
        self.kv_bytes_per_gpu_token = d.kv_bytes_per_gpu_token
        capacities = [t.capacity_bytes / d.block_bytes for t in self.tiers]
        policy = str(cache.get("eviction", "lru"))
        self.caches = [BlockCache(capacities, self.tier_names, policy) for _ in range(d.instances)]
        self.router = Router(router, d.instances)
        self._slots = [[0.0] * self.concurrency for _ in range(d.instances)]
        self._events: list[tuple[float, int, Completion, Acquired, Request]] = []
        self._seq = itertools.count()

    def submit(self, request: Request, now: float) -> None:
        bs, roof = self.block_size, self.roofline
        blocks = self.deployment.blocks(request.blocks)
        inst = self.router.pick(request.session_id, [s[0] for s in self._slots],
                                lambda i: sum(self.caches[i].lookup(blocks)))
        acquired = self.caches[inst].acquire(blocks, now, reusable=reusable_blocks(request.input_tokens, bs))
        hits = acquired.hits
        reused = {name: h * bs for name, h in zip(self.tier_names, hits, strict=True)}
        reused_tokens = acquired.hit_blocks * bs
        prefilled = request.input_tokens - reused_tokens
        load_s = loaded_bytes = 0.0
        for t in range(1, len(hits)):
            if hits[t]:
                nbytes = hits[t] * bs * self.kv_bytes_per_gpu_token
                load_s += roof.load_s(self.tiers[t], nbytes)
                loaded_bytes += nbytes * self.tp
        prefill_s = roof.prefill_s(prefilled, reused_tokens)
        ttft_work = max(load_s, prefill_s) if self.overlap_load else load_s + prefill_s
        start = max(now, heapq.heappop(self._slots[inst]))
        first_token = start + ttft_work
        tpot = roof.decode_step_s(self.concurrency, request.input_tokens + request.output_tokens / 2)
        decode_s = tpot * max(request.output_tokens - 1, 0)
        finish = first_token + decode_s
        heapq.heappush(self._slots[inst], finish)
        no_reuse_prefill = roof.prefill_s(request.input_tokens)
        decode_share = decode_s / self.concurrency
        completion = Completion(
            request_id=request.request_id, instance=inst, start_s=start, first_token_s=first_token,
            finish_s=finish, reused_tokens_by_tier=reused, prefilled_tokens=prefilled,
            loaded_bytes=loaded_bytes, gpu_s=self.tp * (prefill_s + decode_share),
            no_reuse_prefill_s=no_reuse_prefill, no_reuse_gpu_s=self.tp * (no_reuse_prefill + decode_share),
            extra={"tpot_s": tpot, "load_s": load_s},
        )
        heapq.heappush(self._events, (finish, next(self._seq), completion, acquired, request))

    def next_event_time(self) -> float | None:
        return self._events[0][0] if self._events else None

    def advance(self, until: float) -> list[Completion]:
        done = []
        while self._events and self._events[0][0] <= until:
            finish, _, completion, acquired, request = heapq.heappop(self._events)
            output = self.deployment.output_blocks(request) if self.cache_output_blocks else None
            self.caches[completion.instance].release(acquired, finish, output)
            done.append(completion)
        return done

    def stats(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "tiers": tier_report(self.caches, self.block_size)}
