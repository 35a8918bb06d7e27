"""The KV-offload engine: a discrete-event, iteration-level simulation of serving instances with
tiered KV (HBM, DRAM, NVMe, a shared remote warehouse), loads over shared links, preemption,
prefetch during think time, and a router in front.

Events: a call's arrival (``submit``), the end of an instance's step, the end of a transfer on a
link, a prefetch. ``advance(until)`` processes them in time order.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engines.base import Completion, Request
from engines.deployment import Deployment
from engines.kv_cache import BlockCache, tier_report
from engines.offload.links import Link
from engines.offload.scheduler import Instance, Seq
from engines.router import Router
from engines.specs import ConfigError
from traces.hashing import reusable_blocks

LOAD_POLICIES = ("always", "if_faster")
PREEMPTION = ("recompute", "swap")
ADMISSION = ("greedy", "reserve")


class OffloadEngine:
    def __init__(self, model: Mapping[str, Any], hardware: Mapping[str, Any], cache: Mapping[str, Any],
                 tp: int, instances: int, trace_block_size: int, block_size: int | None = None,
                 max_batched_tokens: int = 8192, max_running: int = 256, cache_output_blocks: bool = True,
                 overlap_load: bool = False, load_policy: str = "always", preemption: str = "recompute",
                 inclusive: bool = False, admit_min_uses: int = 0, eviction: str | None = None,
                 eviction_params: Mapping[str, float] | None = None, prefetch: bool = False,
                 prefetch_lead_s: float = 1.0, router: str = "session_affinity",
                 cache_aware_load_weight: float = 64.0, timeline_interval_s: float = 10.0,
                 admission: str = "greedy") -> None:
        for name, value, allowed in (("load_policy", load_policy, LOAD_POLICIES),
                                     ("preemption", preemption, PREEMPTION),
                                     ("admission", admission, ADMISSION)):
            if value not in allowed:
                raise ConfigError(f"engine.{name} must be one of {', '.join(allowed)}, got {value!r}")
        if max_batched_tokens < 1 or max_running < 1:
            raise ConfigError("engine.max_batched_tokens and engine.max_running must be >= 1")
        d = self.deployment = Deployment.build(model, hardware, cache, tp, instances, trace_block_size,
                                               block_size)
        self.model, self.hw, self.tp, self.roofline, self.tiers = d.model, d.hw, d.tp, d.roofline, d.tiers
        self.tier_names, self.block_size = d.tier_names, d.block_size
        self.kv_gpu_token = d.kv_bytes_per_gpu_token
        self.block_bytes = d.block_bytes
        self.load_policy, self.preemption = load_policy, preemption
        self.reserve = admission == "reserve"
        self.cache_output_blocks = bool(cache_output_blocks)
        self.prefetch, self.prefetch_lead_s = bool(prefetch), float(prefetch_lead_s)
        self.router = Router(router, int(instances), float(cache_aware_load_weight))
        self.timeline_interval_s = float(timeline_interval_s)

        n = int(instances)
        shared = [i for i, t in enumerate(self.tiers) if t.shared]
        if shared and shared != [len(self.tiers) - 1]:
            raise ConfigError("only the last tier may be shared by all instances")
        self.local_tiers = self.tiers[:-1] if shared else self.tiers
        self.shared_tier = self.tiers[-1] if shared else None
        policy = eviction or str(cache.get("eviction", "lru"))
        capacities = [t.capacity_bytes / self.block_bytes for t in self.local_tiers]
        headroom = float(cache.get("eviction_headroom", 0.0))
        self.shared_cache = None
        if self.shared_tier is not None:
            self.shared_cache = BlockCache([self.shared_tier.capacity_bytes / self.block_bytes],
                                           [self.shared_tier.name], "lru", headroom=headroom)
            self.shared_link = Link(self.shared_tier.name, self._link_bw(self.shared_tier),
                                    self.shared_tier.latency_s)
        self.instances: list[Instance] = []
        self.links: list[dict[str, Link]] = []
        for i in range(n):
            cache_i = BlockCache(capacities, [t.name for t in self.local_tiers], policy,
                                 dict(eviction_params or {}), admit_min_uses, inclusive,
                                 on_drop=self._to_shared if self.shared_cache else None,
                                 headroom=headroom)
            self.instances.append(Instance(i, cache_i, self.roofline, self.block_size, self.tp,
                                           int(max_batched_tokens), int(max_running), bool(overlap_load)))
            self.links.append({t.name: Link(f"instance{i}.{t.name}", self._link_bw(t), t.latency_s)
                               for t in self.local_tiers[1:]})
        self._seq = itertools.count()
        self._transfers: dict[int, Seq | None] = {}  # transfer id -> waiting call (None: prefetch)
        self._next_transfer_s: float | None = None
        self._prefetches: list[tuple[float, int, int, np.ndarray]] = []
        self._done: list[Completion] = []
        self.clock = 0.0
        self.preemptions = 0
        self.prefetched_blocks = 0
        self.byte_seconds = {t.name: 0.0 for t in self.tiers}
        self.timeline: list[dict[str, Any]] = []
        self._next_sample = 0.0
        self._last_busy: dict[str, float] = {}

    def _link_bw(self, tier) -> float:
        return tier.read_bw * self.hw.link_efficiency

    # -- the protocol -----------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> None:
        self._advance_clock(now)
        blocks = self.deployment.blocks(request.blocks)
        inst = self.instances[self._route(request.session_id, blocks)]
        seq = Seq(request=request, blocks=blocks, arrival_s=now, target_tokens=request.input_tokens)
        inst.waiting.append(seq)
        inst.interrupt(now)
        if inst.step is None:
            self._plan(inst, now)

    def expect(self, parent: Request, at: float) -> None:
        """A call continuing ``parent`` will be sent at ``at``: prefetch its prefix (the parent's
        prompt and output blocks)."""
        if not self.prefetch:
            return
        blocks = self.deployment.blocks(parent.sequence_blocks())
        inst = self._route(parent.session_id, blocks, peek=True)
        heapq.heappush(self._prefetches, (max(at - self.prefetch_lead_s, self.clock), next(self._seq),
                                          inst, blocks))

    def next_event_time(self) -> float | None:
        t = min((inst.busy_until() for inst in self.instances), default=math.inf)
        t = min(t, self._next_transfer())
        if self._prefetches:
            t = min(t, self._prefetches[0][0])
        return None if t == math.inf else t

    def advance(self, until: float) -> list[Completion]:
        while True:
            t = self.next_event_time()
            if t is None or t > until:
                break
            self._advance_clock(t)
            self._finish_transfers(t)
            while self._prefetches and self._prefetches[0][0] <= t:
                self._do_prefetch(*heapq.heappop(self._prefetches)[2:], t)
            for inst in self.instances:
                if inst.step is not None and inst.step.end_s <= t:
                    self._end_step(inst)
                if inst.step is None:
                    self._plan(inst, t)
        done, self._done = self._done, []
        return done

    def stats(self) -> dict[str, Any]:
        bs = self.block_size
        tiers = tier_report([inst.cache for inst in self.instances], bs)
        if self.shared_cache is not None:
            tiers.update(tier_report([self.shared_cache], bs))
        links = {link.name: link.bytes_moved * self.tp for link in self._all_links()}
        return {"block_size": bs, "tiers": tiers, "link_bytes": links,
                "preemptions": self.preemptions, "prefetched_tokens": self.prefetched_blocks * bs,
                "byte_seconds_by_tier": dict(self.byte_seconds), "timeline": self.timeline}

    # -- routing ----------------------------------------------------------------------------
    def _route(self, session_id: str, blocks: np.ndarray, peek: bool = False) -> int:
        """The instance for a call (``peek``: where a session's next call will likely go)."""
        router = self.router
        if peek and router.policy == "round_robin":
            return 0
        return router.pick(session_id, lambda i: self.instances[i].load,
                           lambda i: sum(self.instances[i].cache.lookup(blocks)))

    # -- admission and loads ----------------------------------------------------------------
    def _admit(self, inst: Instance, seq: Seq, now: float) -> bool:
        """Acquire a waiting call's blocks and start its loads; False if its KV does not fit."""
        cache, req, bs = inst.cache, seq.request, self.block_size
        if seq.blocked_need is not None and seq.blocked_need > cache.free_blocks() and inst.running:
            return False  # still no room for what it needed when it last failed to fit
        reusable = reusable_blocks(req.input_tokens, bs)
        local = cache.lookup(seq.blocks, reusable)
        local_total = sum(local)
        shared_hits = 0
        if self.shared_cache is not None and local_total < reusable:
            shared_hits = max(0, self.shared_cache.lookup(seq.blocks, reusable)[0] - local_total)
        need = len(seq.blocks) - local[0] + 1 + math.ceil(seq.swapped_tokens / bs)
        if self.reserve:  # room for its whole sequence and what the running calls will still grow
            need = self._final_blocks(seq) - local[0] + sum(
                max(self._final_blocks(s) - len(s.blocks) - 1 - s.private_blocks, 0) for s in inst.running)
        if need > cache.free_blocks() and inst.running:
            seq.blocked_need = need
            return False
        seq.blocked_need = None
        limit = reusable
        lower = local_total - local[0] + shared_hits
        if lower and self.load_policy == "if_faster" and \
                self._load_estimate(local, shared_hits) >= self.roofline.prefill_s(lower * bs, local[0] * bs):
            limit, shared_hits = local[0], 0  # recomputing those blocks beats loading them
        seq.acquired = acquired = cache.acquire(seq.blocks, now, limit)
        if shared_hits:
            self.shared_cache.stats[0].loaded += shared_hits
        if seq.start_s is None:  # first admission: what it reused is what the call reports
            seq.start_s = now
            seq.reused = {name: h * bs for name, h in zip(cache.names, acquired.hits, strict=True)}
            if self.shared_tier is not None:
                seq.reused[self.shared_tier.name] = shared_hits * bs
        if seq.swapped_tokens:  # swapped out earlier: its whole KV comes back from the next tier
            seq.context, seq.prefill_left = seq.swapped_tokens, 0
            self._start_transfer(inst, seq, self.local_tiers[1].name,
                                 seq.swapped_tokens * self.kv_gpu_token, now)
            seq.swapped_tokens = 0
            return True
        seq.context = (acquired.hit_blocks + shared_hits) * bs
        seq.prefill_left = max(seq.target_tokens - seq.context, 0)
        for t, tier in enumerate(self.local_tiers):
            if t and acquired.hits[t]:
                self._start_transfer(inst, seq, tier.name, acquired.hits[t] * bs * self.kv_gpu_token, now)
        if shared_hits:
            self._start_transfer(inst, seq, None, shared_hits * bs * self.kv_gpu_token, now)
        return True

    def _final_blocks(self, seq: Seq) -> int:
        """HBM blocks a call holds when its last token is decoded (prompt, output, the partial one):
        what ``admission=reserve`` sets aside at admission (TensorRT-LLM's GUARANTEED_NO_EVICT)."""
        return (seq.request.input_tokens + seq.request.output_tokens) // self.block_size + 1

    def _load_estimate(self, local: list[int], shared_hits: int) -> float:
        bs = self.block_size
        times = [self.roofline.load_s(tier, local[t] * bs * self.kv_gpu_token)
                 for t, tier in enumerate(self.local_tiers) if t > 0 and local[t]]
        if shared_hits:
            times.append(self.roofline.load_s(self.shared_tier, shared_hits * bs * self.kv_gpu_token))
        return sum(times)

    def _start_transfer(self, inst: Instance, seq: Seq | None, tier: str | None, bytes_per_gpu: float,
                        now: float) -> None:
        link = self.shared_link if tier is None else self.links[inst.index][tier]
        key = next(self._seq)
        link.start(key, bytes_per_gpu, now)
        self._next_transfer_s = None
        self._transfers[key] = seq
        if seq is not None:
            seq.loads_pending += 1
            seq.loaded_bytes += bytes_per_gpu * self.tp

    def _all_links(self):
        for ls in self.links:
            yield from ls.values()
        if self.shared_cache is not None:
            yield self.shared_link

    def _next_transfer(self) -> float:
        if self._next_transfer_s is None:  # recomputed only after transfers start or end
            self._next_transfer_s = min((link.next_completion() for link in self._all_links()),
                                        default=math.inf)
        return self._next_transfer_s

    def _finish_transfers(self, now: float) -> None:
        if self._next_transfer() > now:
            return
        self._next_transfer_s = None
        for link in self._all_links():
            for key in link.finish(now):
                seq = self._transfers.pop(key)
                if seq is None:
                    continue
                seq.loads_pending -= 1
                if seq.loads_pending == 0:
                    seq.load_s = now - (seq.start_s if seq.start_s is not None else now)
                    if seq.prefill_left == 0 and seq.first_token_s is None and seq.acquired is not None:
                        Instance.emit_first_token(seq, now)  # overlapped prefill was waiting on it
                        if seq.decode_left == 0:
                            self._complete(self._instance_of(seq), seq, now)

    def _instance_of(self, seq: Seq) -> Instance:
        return next(inst for inst in self.instances if seq in inst.running)

    def _do_prefetch(self, inst_index: int, blocks: np.ndarray, now: float) -> None:
        inst = self.instances[inst_index]
        moved = inst.cache.promote(blocks, now)
        for t, tier in enumerate(self.local_tiers):
            if t and moved[t]:
                self.prefetched_blocks += moved[t]
                nbytes = moved[t] * self.block_size * self.kv_gpu_token
                self._start_transfer(inst, None, tier.name, nbytes, now)

    def _to_shared(self, hashes: np.ndarray, now: float) -> None:
        self.shared_cache.insert(hashes, now)

    # -- steps ------------------------------------------------------------------------------
    def _plan(self, inst: Instance, now: float) -> None:
        def next_external() -> float:
            return min(self._next_transfer(), self._prefetches[0][0] if self._prefetches else math.inf)

        inst.plan(now, lambda seq, t: self._admit(inst, seq, t), next_external)

    def _end_step(self, inst: Instance) -> None:
        end, finished, grown = inst.apply()
        inst.cache.reserved += grown
        for seq in finished:
            self._complete(inst, seq, end)
        while inst.cache.pinned + inst.cache.reserved > inst.cache.capacity[0] and len(inst.running) > 1:
            self._preempt(inst, inst.running[-1], end)
        inst.cache.make_room(end)

    def _preempt(self, inst: Instance, seq: Seq, now: float) -> None:
        """Push the latest admitted call back to the head of the queue."""
        self.preemptions += 1
        seq.preemptions += 1
        inst.running.remove(seq)
        inst.cache.release(seq.acquired, now)
        inst.cache.reserved -= seq.private_blocks
        seq.private_blocks = 0
        seq.acquired = None
        if self.preemption == "swap" and len(self.local_tiers) > 1:
            seq.swapped_tokens = seq.context  # written out now, loaded back on readmission
            inst.cache.stats[1].written += math.ceil(seq.context / self.block_size)
        else:
            seq.target_tokens = max(seq.target_tokens, seq.context)  # all it had, its prompt at least
        seq.context = 0
        inst.waiting.appendleft(seq)

    def _complete(self, inst: Instance, seq: Seq, now: float) -> None:
        if seq in inst.running:
            inst.running.remove(seq)
        req = seq.request
        output = self.deployment.output_blocks(req) if self.cache_output_blocks else None
        inst.cache.release(seq.acquired, now, output)
        inst.cache.reserved -= seq.private_blocks
        reused = sum(seq.reused.values())
        no_reuse = self.roofline.prefill_s(req.input_tokens)
        extra_prefill = no_reuse - self.roofline.prefill_s(req.input_tokens - reused, reused)
        start = seq.start_s if seq.start_s is not None else now
        first = seq.first_token_s if seq.first_token_s is not None else now
        self._done.append(Completion(
            request_id=req.request_id, instance=inst.index, start_s=start, first_token_s=first, finish_s=now,
            reused_tokens_by_tier=seq.reused, prefilled_tokens=req.input_tokens - reused,
            loaded_bytes=seq.loaded_bytes, gpu_s=seq.gpu_s, no_reuse_prefill_s=no_reuse,
            no_reuse_gpu_s=seq.gpu_s + self.tp * extra_prefill,
            load_s=seq.load_s, preemptions=seq.preemptions,
        ))

    # -- time -------------------------------------------------------------------------------
    def _advance_clock(self, now: float) -> None:
        """Integrate storage held over time and sample the timeline up to ``now``."""
        if now <= self.clock:
            return
        dt = now - self.clock
        for t, tier in enumerate(self.local_tiers):
            held = sum(inst.cache.used[t] for inst in self.instances)
            self.byte_seconds[tier.name] += held * self.block_bytes * dt
        if self.shared_cache is not None:
            self.byte_seconds[self.shared_tier.name] += self.shared_cache.used[0] * self.block_bytes * dt
        while self._next_sample <= now:
            self._sample(self._next_sample)
            self._next_sample += self.timeline_interval_s
        self.clock = now

    def _sample(self, t: float) -> None:
        row: dict[str, Any] = {"time_s": t}
        for tier_i, tier in enumerate(self.local_tiers):
            row[f"{tier.name}_bytes"] = sum(i.cache.used[tier_i] for i in self.instances) * self.block_bytes
        if self.shared_cache is not None:
            row[f"{self.shared_tier.name}_bytes"] = self.shared_cache.used[0] * self.block_bytes
        for link in self._all_links():
            key = link.name
            busy = link.busy_until(t)
            row[f"{key}_util"] = min((busy - self._last_busy.get(key, 0.0)) / self.timeline_interval_s, 1.0) \
                if t > 0 else 0.0
            self._last_busy[key] = busy
        row["running"] = sum(len(i.running) for i in self.instances)
        row["waiting"] = sum(len(i.waiting) for i in self.instances)
        self.timeline.append(row)
