"""The analytic engine: a closed-form roofline per call with the shared prefix cache.

Each instance serves ``concurrency`` calls at once; the rest wait in FCFS order. A call looks
up and pins its cached prefix when it starts (so only running calls hold KV), and its TTFT is
the wait for a slot, the load of cached KV from lower tiers over their links, and the prefill
of the uncached tokens; its decode runs at the step time of a batch of ``concurrency``
sequences. No batching interplay beyond that: fast enough for millions of calls.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
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
        headroom = float(cache.get("eviction_headroom", 0.0))
        self.caches = [BlockCache(capacities, self.tier_names, policy, headroom=headroom)
                       for _ in range(d.instances)]
        self.router = Router(router, d.instances)
        self._free = [self.concurrency] * d.instances  # idle slots per instance
        self._waiting: list[deque[Request]] = [deque() for _ in range(d.instances)]
        self._events: list[tuple[float, int, Completion, Acquired, Request]] = []
        self._seq = itertools.count()

    def submit(self, request: Request, now: float) -> None:
        inst = self.router.pick(request.session_id, self._in_system, lambda i: sum(
            self.caches[i].lookup(self.deployment.blocks(request.blocks))))
        if self._free[inst]:
            self._free[inst] -= 1
            self._start(request, inst, now)
        else:
            self._waiting[inst].append(request)

    def _in_system(self, inst: int) -> int:
        """Calls running or waiting on an instance (the routers' load)."""
        return self.concurrency - self._free[inst] + len(self._waiting[inst])

    def _start(self, request: Request, inst: int, now: float) -> None:
        """A call takes a slot at ``now``: pin its prefix, price its load, prefill and decode."""
        bs, roof = self.block_size, self.roofline
        acquired = self.caches[inst].acquire(self.deployment.blocks(request.blocks), now,
                                             reusable=reusable_blocks(request.input_tokens, bs))
        hits = acquired.hits
        reused_tokens = acquired.hit_blocks * bs
        prefilled = request.input_tokens - reused_tokens
        load_s = loaded_bytes = 0.0
        for t in range(1, len(hits)):
            if hits[t]:
                nbytes = hits[t] * bs * self.kv_bytes_per_gpu_token
                load_s += roof.load_s(self.tiers[t], nbytes)
                loaded_bytes += nbytes * self.tp
        prefill_s = roof.prefill_s(prefilled, reused_tokens)
        first_token = now + (max(load_s, prefill_s) if self.overlap_load else load_s + prefill_s)
        tpot = roof.decode_step_s(self.concurrency, request.input_tokens + request.output_tokens / 2)
        decode_s = tpot * max(request.output_tokens - 1, 0)
        finish = first_token + decode_s
        no_reuse_prefill = roof.prefill_s(request.input_tokens)
        decode_share = decode_s / self.concurrency
        completion = Completion(
            request_id=request.request_id, instance=inst, start_s=now, first_token_s=first_token,
            finish_s=finish, prefilled_tokens=prefilled,
            reused_tokens_by_tier={n: h * bs for n, h in zip(self.tier_names, hits, strict=True)},
            loaded_bytes=loaded_bytes,
            gpu_s=self.tp * (prefill_s + decode_share), no_reuse_prefill_s=no_reuse_prefill,
            no_reuse_gpu_s=self.tp * (no_reuse_prefill + decode_share),
            load_s=load_s,
        )
        heapq.heappush(self._events, (finish, next(self._seq), completion, acquired, request))

    def next_event_time(self) -> float | None:
        return self._events[0][0] if self._events else None

    def advance(self, until: float) -> list[Completion]:
        done = []
        while self._events and self._events[0][0] <= until:
            finish, _, completion, acquired, request = heapq.heappop(self._events)
            inst = completion.instance
            output = self.deployment.output_blocks(request) if self.cache_output_blocks else None
            self.caches[inst].release(acquired, finish, output)
            done.append(completion)
            if self._waiting[inst]:  # the freed slot goes to the longest-waiting call
                self._start(self._waiting[inst].popleft(), inst, finish)
            else:
                self._free[inst] += 1
        return done

    def stats(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "tiers": tier_report(self.caches, self.block_size)}
