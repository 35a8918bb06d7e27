"""The KV-offload engine: a discrete-event, iteration-level simulation of serving instances with
tiered KV (HBM, DRAM, NVMe, a shared remote warehouse), loads over shared links, preemption,
prefetch during think time, and a router in front.

Events (``events.EventQueue``, one queue): the end of a transfer on a link, a prefetch's start,
the end of an instance's step; a call's arrival (``submit``) runs at once. ``advance(until)``
processes them in time order; after each instant, every idle instance asks its ``Scheduler``
for a plan (admit the queue's head, or run a step) and the engine carries it out.

KV moves over a ``Fabric``: each instance's host link in each direction (PCIe; DRAM and NVMe
traffic of a GPU share it), each local tier's own read and write bandwidth (a drive), each
instance's NIC, and the shared warehouse's aggregate bandwidth. Loads (a hit in a lower tier,
a prefetch, a swap-in) land blocks in HBM only when their transfers finish; a call that matched
blocks still landing waits for them. Writes (demotions, write-through, swap-out, warehouse
puts) take bandwidth too, and HBM blocks being demoted occupy HBM until written, so a tier that
cannot absorb writes fast enough slows admission.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.base import Completion, Request
from engines.deployment import Deployment
from engines.kv_cache import BlockCache, tier_report
from engines.offload.events import PREFETCH, STEP, TRANSFER, EventQueue
from engines.offload.fabric import Fabric, Resource
from engines.offload.scheduler import Instance, Scheduler, Seq, Status
from engines.router import Router
from engines.specs import ConfigError, TierSpec
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
                 prefix_reuse: bool = True, check_invariants: bool = False,
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
        self.priced_tiers = d.tier_names  # its stats report their storage
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
        self.prefix_reuse = bool(prefix_reuse)
        self.check_invariants = bool(check_invariants)
        self.fabric = Fabric()
        eff = self.hw.link_efficiency
        if self.shared_tier is not None:
            self.shared_cache = BlockCache([self.shared_tier.capacity_bytes / self.block_bytes],
                                           [self.shared_tier.name], "lru", headroom=headroom,
                                           reuse=self.prefix_reuse)
        self.scheduler = Scheduler(self.roofline, self.block_size, int(max_batched_tokens), int(max_running),
                                   bool(overlap_load))
        self.instances: list[Instance] = []
        self._pending_writes: list[dict[tuple[int, int], int]] = []
        for i in range(n):
            cache_i = BlockCache(capacities, [t.name for t in self.local_tiers], policy,
                                 eviction_params, admit_min_uses, inclusive,
                                 on_drop=(lambda hashes, now, i=i: self._to_shared(i, hashes, now))
                                 if self.shared_cache else None,
                                 headroom=headroom, reuse=self.prefix_reuse,
                                 on_write=lambda blocks, src, dst, i=i: self._note_write(i, blocks, src, dst))
            self.instances.append(Instance(i, cache_i, self.block_size, self.tp))
            self._pending_writes.append({})
        self._host_in = [self.fabric.resource(f"instance{i}.host_in", self.hw.links["pcie"] * eff)
                         for i in range(n)]
        self._host_out = [self.fabric.resource(f"instance{i}.host_out", self.hw.links["pcie"] * eff)
                          for i in range(n)]
        self._loads: dict[int, _Load] = {}
        # flow -> (the load it is part of, instance, HBM blocks it drains, the call it swaps out)
        self._flows: dict[int, tuple[_Load | None, int, int, Seq | None]] = {}
        self._seq = itertools.count()
        self._events = EventQueue(self._valid)
        self._prefetch_times: list[float] = []  # when the queued prefetches start (a step's outside events)
        self._done: list[Completion] = []
        self.clock = 0.0
        self.preemptions = 0
        self.prefetched_blocks = 0
        self.byte_seconds = {t.name: 0.0 for t in self.tiers}
        self.timeline: list[dict[str, Any]] = []
        self._next_sample = 0.0
        self._last_busy: dict[str, float] = {}
        self.kv_link: tuple[float, float] | None = None  # disaggregated decode: (bytes/s per GPU, latency)

    def _tier_resource(self, inst: int, tier: TierSpec, direction: str) -> Resource:
        """A tier's own bandwidth in one direction (per GPU; the shared tier's is aggregate)."""
        bw = tier.read_bw if direction == "read" else tier.write_bw
        if tier.shared:
            aggregate = tier.aggregate_read_bw if direction == "read" else tier.aggregate_write_bw
            return self.fabric.resource(f"{tier.name}.{direction}", aggregate)
        return self.fabric.resource(f"instance{inst}.{tier.name}.{direction}", bw * self.hw.link_efficiency)

    def _path(self, inst: int, tier: int | None, direction: str) -> list[tuple[Resource, float]]:
        """The resources a move crosses, with the GPUs' shards it carries on each. ``tier``:
        a local tier's index, or None for the shared warehouse. Reads go tier -> HBM; writes
        HBM -> tier 1, tier -> tier + 1 below that (host memory to a drive, not over the GPU's
        link), or the last local tier -> the warehouse."""
        eff = self.hw.link_efficiency
        if tier is None:
            t = self.shared_tier
            nic = self.fabric.resource(f"instance{inst}.nic_{'in' if direction == 'read' else 'out'}",
                                       self.hw.links["nic"] * eff)
            return [(nic, 1.0), (self._tier_resource(inst, t, direction), float(self.tp))]
        own = (self._tier_resource(inst, self.local_tiers[tier], direction), 1.0)
        if direction == "read":
            return [own, (self._host_in[inst], 1.0)]
        return [(self._host_out[inst], 1.0), own] if tier == 1 else [own]

    # -- the protocol -----------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> None:
        self._enqueue(request, now)

    def receive(self, request: Request, now: float, nbytes: float, source: Resource) -> None:
        """A disaggregated decode: queue a call whose prompt KV (``nbytes`` over the whole
        instance) a prefill instance computed. Once admitted (its KV fits), the KV comes over
        ``source`` (the prefill instance's side of the link) and this instance's ``kv_in``
        (``kv_link``: per-GPU bandwidth, latency); then one step computes the last prompt
        position again and samples the first token (as a decode instance does on a full
        prefix hit), and decoding follows."""
        if self.kv_link is None:
            raise ConfigError("this engine has no KV link (set kv_link for a decode pool)")
        self._enqueue(request, now, nbytes, source)

    def _enqueue(self, request: Request, now: float, transfer_bytes: float = 0.0,
                 source: Resource | None = None) -> None:
        self._advance_clock(now)
        blocks = self.deployment.blocks(request.blocks)
        inst = self.instances[self._route(request.session_id, blocks)]
        seq = Seq(request=request, blocks=blocks, arrival_s=now, target_tokens=request.input_tokens,
                  transfer_bytes=transfer_bytes, transfer_src=source)
        inst.waiting.append(seq)
        inst.interrupt(now)
        if inst.step is None:
            self._plan(inst, now)
        else:  # its end may have moved up
            self._events.push(inst.step.end_s, STEP, inst.index, (inst.index, inst.step))
        self._settle(now)

    def expect(self, parent: Request, at: float) -> None:
        """A call continuing ``parent`` will be sent at ``at``: prefetch its prefix (the parent's
        prompt and output blocks)."""
        if not self.prefetch:
            return
        blocks = self.deployment.blocks(parent.sequence_blocks())
        inst = self._route(parent.session_id, blocks, peek=True)
        start = max(at - self.prefetch_lead_s, self.clock)
        self._events.push(start, PREFETCH, next(self._seq), (inst, blocks))
        heapq.heappush(self._prefetch_times, start)

    def next_event_time(self) -> float | None:
        return self._events.next_time()

    def advance(self, until: float) -> list[Completion]:
        while True:
            t = self.next_event_time()
            if t is None or t > until:
                break
            due = self._events.pop_due(t)
            self._advance_clock(t)
            self._finish_transfers(t)
            for kind, payload in due:
                if kind == PREFETCH:
                    heapq.heappop(self._prefetch_times)
                    self._do_prefetch(*payload, t)
            for inst in self.instances:  # step ends (in instance order), then idle instances plan
                if inst.step is not None and inst.step.end_s <= t:
                    self._end_step(inst)
                if inst.step is None:
                    self._plan(inst, t)
            self._settle(t)
        done, self._done = self._done, []
        return done

    def stats(self) -> dict[str, Any]:
        bs = self.block_size
        tiers = tier_report([inst.cache for inst in self.instances], bs)
        if self.shared_cache is not None:
            tiers.update(tier_report([self.shared_cache], bs))
        links = {res.name: res.bytes_moved * self.tp for res in self.fabric.resources.values()}
        return {"block_size": bs, "tiers": tiers, "link_bytes": links,
                "preemptions": self.preemptions, "prefetched_tokens": self.prefetched_blocks * bs,
                "byte_seconds_by_tier": dict(self.byte_seconds), "timeline": self.timeline,
                "capacity_bytes_by_tier": self.deployment.capacity_bytes_by_tier()}

    def _valid(self, t: float, kind: int, payload: Any) -> bool:
        """Is a queued event still due when it was queued for (not superseded)?"""
        if kind == STEP:
            index, step = payload
            return self.instances[index].step is step and step.end_s == t
        if kind == TRANSFER:
            return self.fabric.next_completion() == t
        return True

    def _transfers_changed(self) -> None:
        """A transfer started or ended: the links were re-shared, queue their next end."""
        t = self.fabric.next_completion()
        if t < math.inf:
            self._events.push(t, TRANSFER)

    def _settle(self, now: float) -> None:
        """After every event: start the writes the caches asked for, and check the invariants."""
        for i, pending in enumerate(self._pending_writes):
            if pending:
                for (src, dst), blocks in pending.items():
                    self._write(i, src, dst, blocks * self.block_size, now)
                pending.clear()
        if self.check_invariants:
            self.check()

    def check(self, final: bool = False) -> None:
        """The block caches' invariants, with every running call's hold (see ``BlockCache.check``)."""
        for inst in self.instances:
            inst.cache.check([s.acquired for s in inst.running if s.acquired is not None], final)
            assert final is False or not (inst.running or inst.waiting), "calls left in an instance"
        if self.shared_cache is not None:
            self.shared_cache.check(final=final)
        if final:
            assert not self.fabric.flows and not self._loads, "transfers left in flight"

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
        if seq.swap_out_pending:
            return False  # its KV is still being written out
        if seq.blocked_need is not None and seq.blocked_need > cache.free_blocks() and inst.running:
            return False  # still no room for what it needed when it last failed to fit
        reusable = reusable_blocks(req.input_tokens, bs)
        transfer = seq.transfer_src is not None
        local, shared_hits, need = self._found(inst, seq, reusable)
        if need > cache.free_blocks() and inst.running:
            seq.blocked_need = need
            return False
        if need > cache.room_now():  # room held by evictable blocks: write them out first
            cache.touch(seq.blocks, now)  # what it found is in use, not the LRU victim (as vLLM)
            cache.reclaim(need, now)
            if need > cache.room_now() and (inst.running or cache.draining):
                return False  # admitted once the demotions drain (a write's end is an event)
            local, shared_hits, need = self._found(inst, seq, reusable)
        local_total = sum(local)
        seq.blocked_need = None
        limit = reusable
        lower = local_total - local[0] + shared_hits
        if transfer:  # the prompt's KV comes over the link: use what HBM holds, load nothing
            limit, shared_hits = local[0], 0
        elif lower and self.load_policy == "if_faster" and \
                self._load_estimate(local, shared_hits) >= self.roofline.prefill_s(lower * bs, local[0] * bs):
            limit, shared_hits = local[0], 0  # recomputing those blocks beats loading them
        load = self._new_load(inst)
        seq.acquired = acquired = cache.acquire(seq.blocks, now, limit, load.key)
        seq.status = Status.LOADING
        if shared_hits:
            self.shared_cache.stats[0].loaded += shared_hits
        if seq.start_s is None:  # first admission: what it reused is what the call reports
            seq.start_s = now
            seq.reused = {name: h * bs for name, h in zip(cache.names, acquired.hits, strict=True)}
            if self.shared_tier is not None:
                seq.reused[self.shared_tier.name] = shared_hits * bs
        for waited in acquired.waits:  # blocks it matched that other loads are still landing
            self._loads[waited].waiters.append(seq)
            seq.loads_pending += 1
        seq.context = (acquired.hit_blocks + shared_hits) * bs
        for t in range(1, len(self.local_tiers)):
            if acquired.hits[t]:
                self._start_read(inst, load, t, acquired.hits[t] * bs * self.kv_gpu_token, now, seq)
        if shared_hits:
            self._start_read(inst, load, None, shared_hits * bs * self.kv_gpu_token, now, seq)
        if seq.swapped_tokens > seq.context:  # swapped out earlier: the rest of its KV comes back
            self._start_read(inst, load, 1, (seq.swapped_tokens - seq.context) * self.kv_gpu_token, now, seq)
            seq.context = seq.swapped_tokens
        seq.swapped_tokens = 0
        if transfer:
            self._start_transfer(inst, load, seq, now)
        seq.prefill_left = max(seq.target_tokens - seq.context, 0)
        if load.flows:
            load.waiters.append(seq)
            seq.loads_pending += 1
        else:
            self._loads.pop(load.key)
            cache.landed(load.key)
        seq.load_started_s = now
        if seq.loads_pending == 0:  # nothing to wait for (a fresh admission always has a token to compute)
            cache.commit(acquired, seq.context // bs, now)
            seq.status = Status.PREFILLING
        return True

    def _final_blocks(self, seq: Seq) -> int:
        """HBM blocks a call holds when its last token is decoded (prompt, output, the partial one):
        what ``admission=reserve`` sets aside at admission (TensorRT-LLM's GUARANTEED_NO_EVICT)."""
        return (seq.request.input_tokens + seq.request.output_tokens) // self.block_size + 1

    def _found(self, inst: Instance, seq: Seq, reusable: int) -> tuple[list[int], int, int]:
        """What a waiting call would find: its cached prefix per local tier, the further blocks
        in the shared warehouse, and the HBM blocks admitting it needs."""
        cache, bs = inst.cache, self.block_size
        local = cache.lookup(seq.blocks, reusable)
        local_total = sum(local)
        shared_hits = 0
        if self.shared_cache is not None and local_total < reusable:
            shared_hits = max(0, self.shared_cache.lookup(seq.blocks, reusable)[0] - local_total)
        need = len(seq.blocks) - local[0] + 1 + math.ceil(seq.swapped_tokens / bs)
        if self.reserve:  # room for its whole sequence and what the running calls will still grow
            need = self._final_blocks(seq) - local[0] + sum(
                max(self._final_blocks(s) - len(s.blocks) - 1 - s.private_blocks, 0) for s in inst.running)
        return local, shared_hits, need

    def _load_estimate(self, local: list[int], shared_hits: int) -> float:
        bs = self.block_size
        times = [self.roofline.load_s(tier, local[t] * bs * self.kv_gpu_token)
                 for t, tier in enumerate(self.local_tiers) if t > 0 and local[t]]
        if shared_hits:
            times.append(self.roofline.load_s(self.shared_tier, shared_hits * bs * self.kv_gpu_token))
        return sum(times)

    def _new_load(self, inst: Instance) -> _Load:
        load = _Load(next(self._seq), inst.index)
        self._loads[load.key] = load
        return load

    def _start_read(self, inst: Instance, load: _Load, tier: int | None, bytes_per_gpu: float, now: float,
                    seq: Seq | None) -> None:
        """Move ``bytes_per_gpu`` from a tier into HBM as part of ``load``."""
        latency = (self.shared_tier if tier is None else self.local_tiers[tier]).latency_s
        self._start_flow(self._path(inst.index, tier, "read"), bytes_per_gpu, latency, now, load, inst.index)
        if seq is not None:
            seq.loaded_bytes += bytes_per_gpu * self.tp

    def _start_transfer(self, inst: Instance, load: _Load, seq: Seq, now: float) -> None:
        """Pull a disaggregated call's prompt KV from its prefill instance as part of ``load``.
        Each of this instance's GPUs receives its shard over its own NIC (``kv_in``); the prefill
        side's resource carries all of them. Once: a call preempted later recomputes (vLLM)."""
        bw, latency = self.kv_link
        kv_in = self.fabric.resource(f"instance{inst.index}.kv_in", bw)
        self._start_flow([(seq.transfer_src, float(self.tp)), (kv_in, 1.0)], seq.transfer_bytes / self.tp,
                         latency, now, load, inst.index)
        seq.transfer_src = None
        seq.context = max(seq.context, seq.target_tokens - 1)  # the last position is computed here

    def _note_write(self, inst: int, blocks: int, src: int, dst: int | None) -> None:
        """A cache wrote blocks down (demotion or write-through): started once the event settles."""
        key = (src, dst)
        pending = self._pending_writes[inst]
        pending[key] = pending.get(key, 0) + blocks

    def _write(self, inst: int, src: int, dst: int | None, tokens: int, now: float,
               swapped: Seq | None = None) -> None:
        """Write ``tokens`` of KV from tier ``src`` down to ``dst`` (None: the warehouse): a
        demotion, a write-through, a warehouse put, or the swap-out of the call ``swapped``,
        which may be readmitted once written. What leaves HBM (a demotion, a swap-out) keeps
        occupying it (``draining``) until written; a write-through copies what stays."""
        cache = self.instances[inst].cache
        leaves_hbm = src == 0 and (swapped is not None or not cache.inclusive)
        draining = math.ceil(tokens / self.block_size) if leaves_hbm else 0
        cache.draining += draining
        tier = self.shared_tier if dst is None else self.local_tiers[dst]
        self._start_flow(self._path(inst, dst, "write"), tokens * self.kv_gpu_token, tier.latency_s, now,
                         None, inst, draining, swapped)

    def _start_flow(self, path: list[tuple[Resource, float]], bytes_per_gpu: float, latency_s: float,
                    now: float, load: _Load | None, inst: int, draining: int = 0,
                    swapped: Seq | None = None) -> None:
        """Start one fabric flow: a read or transfer counted in ``load``, or a write (no load) that
        frees ``draining`` HBM blocks and may readmit ``swapped`` once done."""
        key = next(self._seq)
        self.fabric.start(key, path, bytes_per_gpu, latency_s, now)
        self._transfers_changed()
        self._flows[key] = (load, inst, draining, swapped)
        if load is not None:
            load.flows += 1

    def _finish_transfers(self, now: float) -> None:
        if self.fabric.next_completion() > now:
            return
        finished = self.fabric.finish(now)
        if finished:
            self._transfers_changed()
        for key in finished:
            load, inst_index, draining, swapped = self._flows.pop(key)
            if draining:
                self.instances[inst_index].cache.draining -= draining
            if swapped is not None:
                swapped.swap_out_pending = False  # written out: it may be readmitted
            if load is None:
                continue
            load.flows -= 1
            if load.flows:
                continue
            del self._loads[load.key]
            inst = self.instances[load.instance]
            inst.cache.landed(load.key)
            for seq in load.waiters:
                seq.loads_pending -= 1
                if seq.loads_pending == 0 and seq.acquired is not None:
                    self._loads_done(inst, seq, now)

    def _loads_done(self, inst: Instance, seq: Seq, now: float) -> None:
        """Every block a running call found has landed in HBM: it may read them. A call whose
        prefill (overlapped, or none left after a swap-in) was waiting on them emits its first
        token now."""
        seq.load_s += now - seq.load_started_s
        inst.cache.commit(seq.acquired, seq.context // self.block_size, now)
        seq.status = Status.PREFILLING if seq.prefill_left else Status.DECODING
        if seq.prefill_left == 0 and seq.first_token_s is None:
            Instance.emit_first_token(seq, now)
            if seq.decode_left == 0:
                self._complete(inst, seq, now)

    def _do_prefetch(self, inst_index: int, blocks: np.ndarray, now: float) -> None:
        inst = self.instances[inst_index]
        load = self._new_load(inst)
        moved = inst.cache.promote(blocks, now, load.key)
        for t in range(1, len(self.local_tiers)):
            if moved[t]:
                self.prefetched_blocks += moved[t]
                self._start_read(inst, load, t, moved[t] * self.block_size * self.kv_gpu_token, now, None)
        if not load.flows:
            del self._loads[load.key]
            inst.cache.landed(load.key)

    def _to_shared(self, inst: int, hashes: np.ndarray, now: float) -> None:
        """The last local tier let a run go: put it in the warehouse (its new blocks cross the
        instance's NIC and the warehouse's write bandwidth)."""
        before = self.shared_cache.used[0]
        self.shared_cache.insert(hashes, now)
        written = self.shared_cache.used[0] - before
        if written > 0:
            self._note_write(inst, written, len(self.local_tiers) - 1, None)

    # -- steps ------------------------------------------------------------------------------
    def _plan(self, inst: Instance, now: float) -> None:
        """Carry out the scheduler's plan for an idle instance: admit the calls it names while
        they fit, then start the step it plans (and queue its end)."""
        admitted, blocked = 0, False
        while True:
            external = min(self.fabric.next_completion(),
                           self._prefetch_times[0] if self._prefetch_times else math.inf)
            plan = self.scheduler.plan(inst, now, admitted, blocked, external)
            if plan.admit is None:
                break
            if self._admit(inst, plan.admit, now):
                inst.waiting.popleft()
                inst.running.append(plan.admit)
                admitted += 1
            else:
                blocked = True  # FCFS: the head waits for room, and so does everyone behind it
        inst.step = plan.step
        if plan.step is not None:
            self._events.push(plan.step.end_s, STEP, inst.index, (inst.index, plan.step))

    def _end_step(self, inst: Instance) -> None:
        st = inst.step
        end, finished, grown = inst.apply()
        inst.cache.reserved += grown
        for seq, _ in st.chunks:  # what the chunk computed now exists: enter it in the tree
            if seq.acquired is not None and seq.loads_pending == 0:
                inst.cache.commit(seq.acquired, seq.context // self.block_size, end)
        for seq in finished:
            self._complete(inst, seq, end)
        while (victim := self.scheduler.victim(inst)) is not None:
            self._preempt(inst, victim, end)
        inst.cache.make_room(end)

    def _preempt(self, inst: Instance, seq: Seq, now: float) -> None:
        """Push the latest admitted call back to the head of the queue. It keeps only what it
        computed and entered in the tree (if not evicted meanwhile) and, in swap mode, what it
        writes out."""
        self.preemptions += 1
        seq.preemptions += 1
        inst.running.remove(seq)
        inst.cache.release(seq.acquired, now)
        inst.cache.reserved -= seq.private_blocks
        seq.private_blocks = 0
        seq.acquired = None
        seq.status = Status.PREEMPTED
        if self.preemption == "swap" and len(self.local_tiers) > 1 and seq.context:
            seq.swapped_tokens = seq.context  # written out now, loaded back on readmission
            inst.cache.stats[1].written += math.ceil(seq.context / self.block_size)
            seq.swap_out_pending = True  # readmitted only once written out
            self._write(inst.index, 0, 1, seq.context, now, swapped=seq)
        else:
            seq.target_tokens = max(seq.target_tokens, seq.context)  # all it had, its prompt at least
        seq.context = 0
        inst.waiting.appendleft(seq)

    def _complete(self, inst: Instance, seq: Seq, now: float) -> None:
        if seq in inst.running:
            inst.running.remove(seq)
        seq.status = Status.FINISHED
        req = seq.request
        output = self.deployment.output_blocks(req) if self.cache_output_blocks else None
        inst.cache.release(seq.acquired, now, output)
        inst.cache.reserved -= seq.private_blocks
        start = seq.start_s if seq.start_s is not None else now
        first = seq.first_token_s if seq.first_token_s is not None else now
        self._done.append(Completion(
            request_id=req.request_id, instance=inst.index, start_s=start, first_token_s=first, finish_s=now,
            reused_tokens_by_tier=seq.reused, prefilled_tokens=seq.prefilled,
            recomputed_tokens=seq.recomputed, loaded_bytes=seq.loaded_bytes, gpu_s=seq.gpu_s,
            load_s=seq.load_s, preemptions=seq.preemptions,
        ))

    # -- time -------------------------------------------------------------------------------
    def _advance_clock(self, now: float) -> None:
        """Integrate storage held over time and sample the timeline up to ``now``."""
        if now <= self.clock:
            return
        dt = now - self.clock
        for t, tier in enumerate(self.local_tiers):
            held = 0
            for inst in self.instances:
                held += inst.cache.used[t]
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
        for res in self.fabric.resources.values():
            busy = self.fabric.busy_s(res, t)
            busy_share = (busy - self._last_busy.get(res.name, 0.0)) / self.timeline_interval_s
            row[f"{res.name}_util"] = min(busy_share, 1.0) if t > 0 else 0.0
            self._last_busy[res.name] = busy
        row["running"] = sum(len(i.running) for i in self.instances)
        row["waiting"] = sum(len(i.waiting) for i in self.instances)
        self.timeline.append(row)


@dataclass(eq=False)
class _Load:
    """Transfers that land blocks in one instance's HBM together (one call's hits, a prefetch,
    a swap); the blocks are readable once all are done."""

    key: int
    instance: int
    flows: int = 0
    waiters: list[Seq] = field(default_factory=list)
