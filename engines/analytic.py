"""The analytic engine: closed-form times per call on instances that share their GPUs.

Each instance runs at most ``concurrency`` calls, admitted FCFS when their KV fits (prompt and
whole output reserved up front, as TensorRT-LLM's no-evict admission: never a preemption). A
started call pins its cached prefix and waits for what it found in lower tiers (or another
call's load still landing) to reach HBM. Prefills of one instance run one at a time, FCFS, each
at the whole instance's speed (a serving engine's prefill runs its chunks in order, and one
prefill already saturates the GPUs' compute, so processor sharing would only delay every
call's first token); every chunk step of it also carries the instance's decoding batch (a
mixed step costs the sum of its phases). A call decodes one token per ``tpot``, the decode
step of the batch decoding when it starts, in steps without a prefill chunk; while a prefill
runs, every call decoding beside it makes one token per chunk step instead, so its finish
moves by the time it overlaps the prefill less the tokens it made in those steps (or lands
inside the prefill, at the step that makes its last token). Finishes are re-keyed lazily: a
delayed call's old event re-queues it when it comes up. GPU time is booked in time order:
each prefill span whole to the prefilling call (its mixed steps included), each stretch of
pure decode split evenly among the calls decoding then, so what an instance's calls are booked
is tp x its busy time, never more. Its prompt blocks become reusable when its prefill ends,
its output blocks when it finishes. A prefill's end needs no event of its own: it is applied,
in time order, when its instance is next touched (a call routed there, a finish, a load
landing), and nothing reads an instance in between. Writes to lower tiers are not timed here
(the offload engine times them). The KV each tier holds is integrated over time (byte-seconds,
for storage cost), as the offload engine does. Not modelled: a call's tpot does not follow
later changes of the batch (only prefill stalls move it), a prefill's steps keep the batch they
started with, and a chunk step always carries a whole chunk. Fast enough for millions of calls.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.base import Completion, Request
from engines.deployment import Deployment
from engines.kv_cache import Acquired, BlockCache, tier_report
from engines.router import Router
from engines.specs import ConfigError
from traces.hashing import reusable_blocks

LANDED, FINISHED = 0, 2  # event kinds, in the order they run at one instant (a prefill's end,
# kind 1, runs between them: see _prefilled)


@dataclass(slots=True, eq=False)
class _Running:
    request: Request
    blocks: np.ndarray
    acquired: Acquired
    decode_blocks: int
    completion: Completion
    tpot: float = 0.0  # seconds per token in steps without a prefill chunk (the batch at its join)
    context: float = 0.0  # its mean context over its decode
    event_at: float = -1.0  # time of its live FINISHED event (others for it are stale)
    share_at_join: float = 0.0  # the instance's decode share integral when it started decoding


class AnalyticEngine:
    def __init__(self, model: Mapping[str, Any], hardware: Mapping[str, Any], cache: Mapping[str, Any],
                 tp: int, instances: int, trace_block_size: int, concurrency: int = 256,
                 block_size: int | None = None, cache_output_blocks: bool = True,
                 overlap_load: bool = False, router: str = "session_affinity",
                 max_batched_tokens: int = 8192, prefix_reuse: bool = True,
                 check_invariants: bool = False, eviction_params: Mapping[str, float] | None = None) -> None:
        if int(concurrency) < 1 or int(max_batched_tokens) < 1:
            raise ConfigError("engine.concurrency and engine.max_batched_tokens must be >= 1")
        d = self.deployment = Deployment.build(model, hardware, cache, tp, instances, trace_block_size,
                                               block_size)
        self.model, self.hw, self.tp, self.roofline, self.tiers = d.model, d.hw, d.tp, d.roofline, d.tiers
        self.tier_names, self.block_size = d.tier_names, d.block_size
        self.priced_tiers = d.tier_names  # its stats report their storage
        self.concurrency = int(concurrency)
        self.max_batched_tokens = int(max_batched_tokens)
        self.cache_output_blocks = bool(cache_output_blocks)
        self.overlap_load = bool(overlap_load)
        self.check_invariants = bool(check_invariants)
        self.kv_bytes_per_gpu_token = d.kv_bytes_per_gpu_token
        capacities = [t.capacity_bytes / d.block_bytes for t in self.tiers]
        policy = str(cache.get("eviction", "lru"))
        headroom = float(cache.get("eviction_headroom", 0.0))
        self.caches = [BlockCache(capacities, self.tier_names, policy, eviction_params,
                                  headroom=headroom, reuse=bool(prefix_reuse)) for _ in range(d.instances)]
        self.router = Router(router, d.instances)
        self._running: list[set[_Running]] = [set() for _ in range(d.instances)]
        self._waiting: list[deque[Request]] = [deque() for _ in range(d.instances)]
        self._prefill_free_at = [0.0] * d.instances  # when each instance's prefill server frees up
        self._decoding: list[list[_Running]] = [[] for _ in range(d.instances)]  # scheduled decodes
        # GPU time booked in time order (see _account): prefill spans not yet passed, the time
        # accounted up to, the calls decoding then, and the integral of dt / batch over the
        # instance's pure-decode time
        self._prefill_spans: list[deque[tuple[float, float]]] = [deque() for _ in range(d.instances)]
        self._booked_to = [0.0] * d.instances
        self._batch = [0] * d.instances
        self._share = [0.0] * d.instances
        self._land_at: dict[int, float] = {}  # load id -> when its blocks land
        self._events: list[tuple[float, int, int, Any]] = []
        # prefills ended or to end, per instance: their ends are applied (prompt committed, the
        # call joins the decode batch) lazily, just before anything else touches the instance
        # at or after that time, so they cost no event of their own
        self._prefilled: list[list[tuple[float, int, _Running]]] = [[] for _ in range(d.instances)]
        self._seq = itertools.count()
        # KV held per instance and tier, integrated over time (block-seconds) up to ``_held_to``:
        # an instance's cache changes in time order, so integrating before each change is exact
        self._block_s = [[0.0] * len(self.tiers) for _ in range(d.instances)]
        self._held_to = [0.0] * d.instances
        self._last_t = 0.0  # the latest time the engine was asked about (a send or an event)

    def submit(self, request: Request, now: float) -> None:
        self._last_t = max(self._last_t, now)
        inst = self.router.pick(request.session_id, self._in_system, lambda i: sum(
            self._ended_prefills(i, now).lookup(self.deployment.blocks(request.blocks))))
        self._end_prefills(inst, now)
        self._waiting[inst].append(request)
        self._start_waiting(inst, now)
        self._check(inst)

    def _in_system(self, inst: int) -> int:
        """Calls running or waiting on an instance (the routers' load)."""
        return len(self._running[inst]) + len(self._waiting[inst])

    def _decode_blocks(self, request: Request, prompt_blocks: int) -> int:
        return math.ceil((request.input_tokens + request.output_tokens) / self.block_size) - prompt_blocks

    def _start_waiting(self, inst: int, now: float) -> None:
        """Start queued calls, oldest first, while a slot is free and their KV fits (a call
        alone on an idle instance starts whatever it needs)."""
        waiting, cache = self._waiting[inst], self.caches[inst]
        while waiting and len(self._running[inst]) < self.concurrency:
            request = waiting[0]
            blocks = self.deployment.blocks(request.blocks)
            decode_blocks = self._decode_blocks(request, len(blocks))
            need = len(blocks) + decode_blocks
            free = cache.free_blocks()
            if need > free and self._running[inst] and need - cache.lookup(blocks)[0] > free:
                return  # (the lookup only when the whole prompt would not fit anyway)
            waiting.popleft()
            self._start(request, blocks, decode_blocks, inst, now)

    def _start(self, request: Request, blocks: np.ndarray, decode_blocks: int, inst: int, now: float) -> None:
        """A call starts at ``now``: pin its prefix, time its loads, its prefill and its decode
        (``decode_blocks``: the KV its output will take, reserved now)."""
        bs, roof, cache = self.block_size, self.roofline, self.caches[inst]
        self._hold(inst, now)
        load_id = next(self._seq)
        acquired = cache.acquire(blocks, now, reusable_blocks(request.input_tokens, bs), load_id)
        cache.reserved += decode_blocks
        cache.make_room(now)
        hits = acquired.hits
        reused_tokens = acquired.hit_blocks * bs
        prefilled = request.input_tokens - reused_tokens
        load_s = loaded_bytes = 0.0
        for t in range(1, len(hits)):
            if hits[t]:
                nbytes = hits[t] * bs * self.kv_bytes_per_gpu_token
                load_s += roof.load_s(self.tiers[t], nbytes)  # one after another over one host link
                loaded_bytes += nbytes * self.tp
        ready = now + load_s
        if load_s > 0:
            self._land_at[load_id] = ready
            self._push(ready, LANDED, (load_id, inst))
        else:
            cache.landed(load_id)
        for w in acquired.waits:
            ready = max(ready, self._land_at[w])
        start = max(now if self.overlap_load else ready, self._prefill_free_at[inst])
        decoding = self._decoding_from(inst, start)
        prefill_s, steps = self._prefill_s(decoding, prefilled, reused_tokens)
        end = start + prefill_s
        if prefill_s > 0:
            self._stall(decoding, start, end, steps)
            self._prefill_spans[inst].append((start, end))
        first_token = max(end, ready)
        self._prefill_free_at[inst] = end
        context = self._context(request)
        batch, context_sum = 1, context
        for r in decoding:
            if r.completion.finish_s > first_token:  # still decoding then: joins its batch
                batch += 1
                context_sum += r.context
        tpot = roof.decode_step_s(batch, context_sum / batch)
        finish = first_token + tpot * max(request.output_tokens - 1, 0)
        completion = Completion(
            request_id=request.request_id, instance=inst, start_s=now, first_token_s=first_token,
            finish_s=finish, prefilled_tokens=prefilled,
            reused_tokens_by_tier=dict(zip(self.tier_names, [h * bs for h in hits], strict=True)),
            loaded_bytes=loaded_bytes, gpu_s=self.tp * prefill_s, load_s=ready - now,
        )
        running = _Running(request, blocks, acquired, decode_blocks, completion, tpot, context, finish)
        decoding.append(running)
        self._running[inst].add(running)
        heapq.heappush(self._prefilled[inst], (first_token, next(self._seq), running))
        self._push(finish, FINISHED, running)

    @staticmethod
    def _context(request: Request) -> float:
        """A call's mean context over its decode."""
        return request.input_tokens + request.output_tokens / 2

    def _decoding_from(self, inst: int, t: float) -> list[_Running]:
        """The calls of an instance still decoding at ``t``, those finished dropped (asked at
        non-decreasing times: prefills run in order, so everything decoding started before)."""
        live = self._decoding[inst]
        for r in live:
            if r.completion.finish_s <= t:
                live = self._decoding[inst] = [r for r in live if r.completion.finish_s > t]
                break
        return live

    def _prefill_s(self, decoding: list[_Running], new_tokens: int, cached_tokens: int) -> tuple[float, int]:
        """(time, chunk steps) of a prefill whose every chunk step also decodes ``decoding``."""
        if new_tokens <= 0:
            return 0.0, 0
        roof = self.roofline
        alone = roof.prefill_s(new_tokens, cached_tokens)
        chunk = min(new_tokens, self.max_batched_tokens)
        steps = math.ceil(new_tokens / chunk)
        if not decoding:
            return alone, steps
        batch = len(decoding)
        mean_ctx = sum([r.context for r in decoding]) / batch
        return alone + steps * roof.decode_in_chunk_s(chunk, cached_tokens, batch, mean_ctx), steps

    def _stall(self, decoding: list[_Running], start: float, end: float, steps: int) -> None:
        """A prefill of ``steps`` chunk steps runs over [start, end): a call decoding then makes
        one token a step instead of one a ``tpot``, so its finish moves by the time it overlaps
        the prefill less its tokens made in those steps (or into the prefill, if it ends there).
        A later finish is picked up when its old event comes up; an earlier one is pushed now."""
        span = end - start
        for r in decoding:
            c = r.completion
            a = start if c.first_token_s < start else c.first_token_s
            if a >= end:
                continue
            in_steps = steps * (end - a) / span
            left = (c.finish_s - a) / r.tpot if r.tpot > 0 else 0.0
            if left <= in_steps:
                finish = a + left * span / steps
            else:
                finish = c.finish_s + (end - a) - in_steps * r.tpot
            if finish < r.event_at:
                r.event_at = finish
                self._push(finish, FINISHED, r)
            c.finish_s = finish

    def _account(self, inst: int, t: float) -> None:
        """Book the instance's pure-decode time up to ``t`` to the calls decoding: each gets its
        share dt / batch (prefill spans are booked whole to the prefilling call), so the GPU
        time booked never exceeds tp x the instance's busy time."""
        last = self._booked_to[inst]
        if t <= last:
            return
        spans, in_prefill = self._prefill_spans[inst], 0.0
        while spans and spans[0][0] < t:
            s, e = spans[0]
            if e <= t:
                in_prefill += e - s
                spans.popleft()
            else:
                in_prefill += t - s
                spans[0] = (t, e)
                break
        if self._batch[inst]:
            self._share[inst] += (t - last - in_prefill) / self._batch[inst]
        self._booked_to[inst] = t

    def _push(self, t: float, kind: int, what: Any) -> None:
        heapq.heappush(self._events, (t, kind, next(self._seq), what))

    def next_event_time(self) -> float | None:
        """The next live event: stale finishes are dropped and moved ones re-keyed here, so the
        runner never advances to a time where nothing happens."""
        events = self._events
        while events:
            t, kind, _, what = events[0]
            if kind == FINISHED:
                if t != what.event_at:
                    heapq.heappop(events)  # stale: its finish was moved earlier
                    continue
                if t < what.completion.finish_s:  # delayed by prefills since: re-key
                    what.event_at = what.completion.finish_s
                    heapq.heapreplace(events, (what.event_at, FINISHED, next(self._seq), what))
                    continue
            return t
        return None

    def _ended_prefills(self, inst: int, t: float) -> BlockCache:
        """The instance's cache once its prefills ended by ``t`` are applied."""
        self._end_prefills(inst, t)
        return self.caches[inst]

    def _end_prefills(self, inst: int, t: float, at_t: bool = True) -> None:
        """Apply the ends of the instance's prefills before ``t`` (and at ``t`` if ``at_t``): the
        prompt is computed, reusable by any later call, and the call joins the decode batch."""
        pending = self._prefilled[inst]
        while pending and (pending[0][0] < t or at_t and pending[0][0] == t):
            end, _, running = heapq.heappop(pending)
            self._account(inst, end)
            self._hold(inst, end)
            self.caches[inst].commit(running.acquired, len(running.blocks), end)
            running.share_at_join = self._share[inst]
            self._batch[inst] += 1
            self._check(inst)

    def advance(self, until: float) -> list[Completion]:
        done = []
        while (t := self.next_event_time()) is not None and t <= until:
            _, kind, _, what = heapq.heappop(self._events)
            self._last_t = max(self._last_t, t)
            if kind == LANDED:
                load_id, inst = what
                self._end_prefills(inst, t, at_t=False)
                del self._land_at[load_id]
                self.caches[inst].landed(load_id)
                continue
            inst = what.completion.instance
            self._end_prefills(inst, t)
            self._account(inst, t)
            cache = self.caches[inst]
            what.event_at = -1.0
            self._batch[inst] -= 1
            what.completion.gpu_s += self.tp * (self._share[inst] - what.share_at_join)
            output = self.deployment.output_blocks(what.request) if self.cache_output_blocks else None
            self._hold(inst, t)
            cache.reserved -= what.decode_blocks
            cache.release(what.acquired, t, output)
            self._running[inst].discard(what)
            done.append(what.completion)
            self._start_waiting(inst, t)
            self._check(inst)
        return done

    def _hold(self, inst: int, t: float) -> None:
        """Integrate the instance's KV held per tier up to ``t`` (before its cache changes)."""
        dt = t - self._held_to[inst]
        if dt > 0:
            held = self._block_s[inst]
            for tier, used in enumerate(self.caches[inst].used):
                held[tier] += used * dt
            self._held_to[inst] = t

    def _check(self, inst: int) -> None:
        if self.check_invariants:
            self.caches[inst].check([r.acquired for r in self._running[inst]])

    def check(self, final: bool = False) -> None:
        """Every instance's block-cache invariants (see ``BlockCache.check``)."""
        for inst, cache in enumerate(self.caches):
            cache.check([r.acquired for r in self._running[inst]], final)

    def stats(self) -> dict[str, Any]:
        """Per-tier cache figures, and the KV each tier held over the run (byte-seconds, up to
        the last send or event: what storage cost is charged on)."""
        for inst in range(len(self.caches)):
            self._hold(inst, self._last_t)
        block_bytes = self.deployment.block_bytes
        byte_s = {name: sum(held[t] for held in self._block_s) * block_bytes
                  for t, name in enumerate(self.tier_names)}
        return {"block_size": self.block_size, "tiers": tier_report(self.caches, self.block_size),
                "byte_seconds_by_tier": byte_s,
                "capacity_bytes_by_tier": self.deployment.capacity_bytes_by_tier()}
