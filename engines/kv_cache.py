"""The KV block cache shared by every engine: blocks keyed by chained hash, held in tiers.

Tier 0 is HBM; lower tiers (DRAM, NVMe, a remote warehouse) receive what the tier above evicts;
the last tier drops (or hands the blocks to a shared tier, see ``on_drop``). A hit in a lower
tier is loaded back into HBM. Running requests pin their blocks. Eviction takes, per tier, the
lowest-priority *leaf* run (one none of whose children still hold blocks in that tier or a
faster one), tail first, so the cached set stays prefix-closed and a deeper block never sits in
a faster tier than its ancestors. The order is a policy object (``POLICIES``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.radix import Node, RadixTree
from engines.specs import ConfigError


class EvictionPolicy:
    """LRU: the least recently used leaf run goes first."""

    needs: tuple[str, ...] = ()  # its parameters, each required (a default of 0 would quietly be LRU)

    def __init__(self, **params: float) -> None:
        self.params = params

    def priority(self, node: Node) -> float:
        return node.stamp

    def evictable(self, node: Node, tier: int, now: float) -> bool:
        """False holds every candidate behind it too (the heap is ordered by priority)."""
        return True


class TtlPinPolicy(EvictionPolicy):
    """Keep a session's blocks in HBM for ``ttl_s`` after its call ends, while its next call
    (after a tool runs) is expected; LRU after that (Continuum-style pinning)."""

    needs = ("ttl_s",)

    def evictable(self, node: Node, tier: int, now: float) -> bool:
        return tier > 0 or node.stamp + self.params["ttl_s"] <= now


class SessionAwarePolicy(EvictionPolicy):
    """LRU, but a run that several sessions share (one with two or more children, such as a
    system prompt) counts as ``shared_bonus_s`` younger, so idle sessions' own runs go first."""

    needs = ("shared_bonus_s",)

    def priority(self, node: Node) -> float:
        shared = len(node.children) >= 2
        return node.stamp + (self.params["shared_bonus_s"] if shared else 0.0)


POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": EvictionPolicy, "ttl_pin": TtlPinPolicy, "session_aware": SessionAwarePolicy}


def eviction_policy(name: str, params: Mapping[str, Any] | None = None) -> EvictionPolicy:
    """The policy ``name`` with its parameters, each checked: a missing, misspelt or non-numeric
    one is an error, never a silent 0 (which would make it LRU)."""
    if name not in POLICIES:
        raise ConfigError(f"unknown eviction policy {name!r}; choose one of {sorted(POLICIES)}")
    params = dict(params or {})
    known = sorted({p for cls in POLICIES.values() for p in cls.needs})
    for key, value in params.items():
        if key not in known:
            raise ConfigError(f"engine.eviction_params.{key}: unknown (known: {', '.join(known)})")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"engine.eviction_params.{key} must be a number, got {value!r}")
    for key in POLICIES[name].needs:
        if params.get(key) is None:
            raise ConfigError(f"eviction policy {name} needs engine.eviction_params.{key}")
    return POLICIES[name](**{k: float(v) for k, v in params.items() if v is not None})


@dataclass
class TierStats:
    """Block counts moved per tier over a run."""

    written: int = 0  # blocks that entered the tier (inserted, demoted or written through)
    evicted: int = 0  # blocks that left it by eviction
    loaded: int = 0  # blocks read from it by hits
    dropped: int = 0  # blocks evicted from it that no lower tier took
    overflow: int = 0  # largest excess over capacity that pinned blocks forced


@dataclass(slots=True)
class Acquired:
    """A running call's hold on the cache.

    ``hits``: blocks found per tier (reusable ones only). The call pins the path from the root
    to ``leaf``, which covers exactly its first ``committed`` prompt blocks; the rest of its
    prompt is ``private`` KV until a prefill chunk computes it and ``commit`` hands it to the
    tree (a block some other call committed first stays private: both computed it).
    ``waits``: ids of loads still landing blocks it matched; it may not read them before.
    """

    leaf: Node
    hits: list[int]
    prompt: np.ndarray  # the block list acquired
    committed: int = 0
    private: int = 0
    waits: tuple[int, ...] = ()

    @property
    def prompt_blocks(self) -> int:
        return len(self.prompt)

    @property
    def hit_blocks(self) -> int:
        return sum(self.hits)


class BlockCache:
    """``capacities`` in blocks, fast tier first.

    The causal rule, the same for every engine: a block is in the tree (and so reusable) only
    once it exists where it is read. ``acquire`` pins the cached prefix and holds the rest of
    the prompt as private KV; ``commit`` enters prompt blocks once a prefill chunk computed
    them; ``release`` enters the output blocks once decoded. Blocks raised from a lower tier
    into HBM carry the id of their load (``Node.landing``) until ``landed``: a call that
    matches them waits for it (``Acquired.waits``).

    HBM holds, besides the tree (``used[0]``): ``reserved`` blocks of running sequences'
    decode KV (kept by the engine), ``uncommitted`` private prompt KV (kept here) and
    ``draining`` blocks demoted but still being written down (kept by an engine that times
    writes); ``free_blocks`` is what is left for new KV.
    ``admit_min_uses``: a leaf run used fewer times is dropped from HBM instead of written down.
    ``inclusive``: blocks are written to the next tier when stored (write-through), so demotion
    moves nothing; ``on_drop(hashes)`` receives runs the last tier lets go (full block lists).
    ``on_move(hashes, src, dst)`` hears of every block that enters or leaves a tier (src None:
    newly stored; dst None: dropped), for an engine that holds the real KV (engines.torch_engine).
    ``on_write(blocks, src, dst)`` hears of every write down (a demotion, or a write-through),
    for an engine that times writes.
    ``headroom``: once a tier overflows, evict until this fraction of it (whole blocks, rounded
    down) is free, so evictions come in batches rather than a few blocks at every store (the
    low/high watermarks of an OS page cache; 0 evicts exactly the excess).
    ``reuse=False`` (the no-reuse baseline): nothing is ever found, every call's KV is private
    and freed when it ends.
    """

    def __init__(self, capacities: Sequence[float], names: Sequence[str] | None = None,
                 policy: str = "lru", policy_params: Mapping[str, Any] | None = None,
                 admit_min_uses: int = 0, inclusive: bool = False,
                 on_drop: Callable[[np.ndarray, float], None] | None = None,
                 on_move: Callable[[np.ndarray, int | None, int | None], None] | None = None,
                 headroom: float = 0.0, reuse: bool = True,
                 on_write: Callable[[int, int, int], None] | None = None) -> None:
        if not capacities:
            raise ValueError("a block cache needs at least one tier")
        self.policy = eviction_policy(policy, policy_params)
        if not 0.0 <= headroom < 1.0:
            raise ConfigError(f"cache.eviction_headroom must be in [0, 1), got {headroom}")
        self.capacity = [float(c) for c in capacities]
        self.target = [c if math.isinf(c) else c - math.floor(headroom * c) for c in self.capacity]
        self.names = list(names) if names else [f"tier{i}" for i in range(len(capacities))]
        self.n_tiers = len(self.capacity)
        self.tree = RadixTree(self.n_tiers)
        self.used = [0] * self.n_tiers
        self.pinned = 0  # blocks of pinned runs (all in tier 0)
        self.reserved = 0
        self.uncommitted = 0
        self.draining = 0
        self.reuse = bool(reuse)
        self.stats = [TierStats() for _ in range(self.n_tiers)]
        self.admit_min_uses = int(admit_min_uses)
        self.inclusive = bool(inclusive)
        self.on_drop = on_drop
        self.on_move = on_move
        self.on_write = on_write
        self.clock = 0.0
        self._heaps: list[list[tuple[float, int, Node]]] = [[] for _ in range(self.n_tiers)]
        self._seq = itertools.count()
        self._landing: dict[int, list[Node]] = {}

    # -- queries --------------------------------------------------------------------------
    def lookup(self, hashes: np.ndarray, limit: int | None = None) -> list[int]:
        """Leading blocks of ``hashes`` cached per tier (no side effects)."""
        if not self.reuse:
            return [0] * self.n_tiers
        path, matched, k = self.tree.match(hashes)
        return self._hits(path, matched if limit is None else min(matched, limit), last_k=k)

    def free_blocks(self) -> float:
        """Tier-0 blocks that new KV may take: capacity less everything held there but
        unpinned (evictable) tree blocks."""
        return self.capacity[0] - self.pinned - self.reserved - self.uncommitted - self.draining

    def touch(self, hashes: np.ndarray, now: float) -> None:
        """Mark the cached prefix of ``hashes`` used now (a call is about to take it), so
        eviction picks other runs first."""
        if not self.reuse:
            return
        path, _, _ = self.tree.match(hashes)
        for node in path:
            node.stamp = now
            if node.pins == 0:
                self._push_all(node)

    def room_now(self) -> float:
        """Tier-0 blocks free this instant: nothing in them, nothing being written out of them."""
        return self.capacity[0] - self.used[0] - self.reserved - self.uncommitted - self.draining

    def reclaim(self, blocks: int, now: float) -> None:
        """Evict (demote or drop) enough of HBM for ``blocks`` more; a demotion frees its room
        only once written (``draining``)."""
        self.clock = now
        self._evict(0, extra=blocks)
        for t in range(1, self.n_tiers):  # what went down may overflow the tiers below
            if self.used[t] > self.capacity[t]:
                self._evict(t)

    def _hbm_held(self) -> int:
        """Tier-0 blocks counted against capacity by eviction (writes in flight excluded:
        evicting more does not free them sooner)."""
        return self.used[0] + self.reserved + self.uncommitted

    def _hits(self, path: list[Node], limit: int, last_k: int | None = None) -> list[int]:
        hits = [0] * self.n_tiers
        for node in path:
            if node.tier_end[0] != len(node.hashes):
                break
        else:
            hits[0] = limit  # the common case: the whole path sits in HBM
            return hits
        left = limit
        for i, node in enumerate(path):
            if left <= 0:
                break
            span = len(node) if (last_k is None or i < len(path) - 1) else last_k
            take = min(span, left)
            for t in range(self.n_tiers):
                hits[t] += node.count_in_tier(t, take)
            left -= take
        return hits

    # -- a request's life -----------------------------------------------------------------
    def acquire(self, hashes: np.ndarray, now: float, reusable: int | None = None,
                load_id: int | None = None) -> Acquired:
        """Pin the cached prefix (at most ``reusable`` blocks: the last token is always computed;
        an engine that declines a slow load passes the HBM-resident prefix), raise its
        lower-tier blocks into HBM, and hold the rest of the prompt as private KV.

        With ``load_id`` the raised blocks are landing until ``landed(load_id)``; without it
        (an engine that copies them at once) they are there now.
        """
        self.clock = now
        if not self.reuse:
            self.uncommitted += len(hashes)
            self._evict_all()
            return Acquired(self.tree.root, [0] * self.n_tiers, hashes, 0, len(hashes))
        path, matched, k = self.tree.match(hashes)
        limit = matched if reusable is None else min(matched, reusable)
        if limit < matched:  # cut the path at the limit
            depth = 0
            for i, node in enumerate(path):
                if depth + len(node) >= limit:
                    k = limit - depth
                    path = path[:i + 1] if k else path[:i]
                    k = k or (len(path[-1]) if path else 0)
                    break
                depth += len(node)
        path = self.tree.cut(path, k)
        hits = self._hits(path, limit)
        for t in range(1, self.n_tiers):
            self.stats[t].loaded += hits[t]
        waits = []  # loads still landing blocks of the path (before any is marked for this one)
        leaf = self.tree.root
        for node in path:
            if node.landing is not None:
                waits.append(node.landing)
            self._pin(node, now)
            node.uses += 1
            if node.tier_end[0] != len(node.hashes):
                self._raise_to_hbm(node)
                if load_id is not None:
                    self._mark_landing(node, load_id)
            leaf = node
        private = len(hashes) - limit
        self.uncommitted += private
        self._evict_all()
        return Acquired(leaf=leaf, hits=hits, prompt=hashes, committed=limit,
                        private=private, waits=tuple(sorted(set(waits))) if waits else ())

    def commit(self, acquired: Acquired, upto: int, now: float) -> None:
        """The call has computed its first ``upto`` prompt blocks: enter those not yet in the
        tree (pinned by the call). One another call entered first stays private; one held in
        a lower tier comes up to HBM at no transfer (the call computed it there)."""
        upto = min(upto, len(acquired.prompt))
        if upto <= acquired.committed or not self.reuse:
            return
        self.clock = now
        hashes = acquired.prompt[:upto]
        path, matched, k = self.tree.match(hashes, acquired.leaf)
        path = self.tree.cut(path, k)
        adopted = 0
        leaf = acquired.leaf
        for node in path:
            self._pin(node, now)
            node.uses += 1
            if node.tier_end[0] != len(node.hashes):
                adopted += sum(self._raise_to_hbm(node))
            leaf = node
        if matched < upto:
            leaf = self._store(leaf, hashes[matched:], now, max_pins=1)
            if not leaf.pins:  # a new node, not the leaf grown in place
                self._pin(leaf, now)
                leaf.uses += 1
            adopted += upto - matched
        acquired.leaf, acquired.committed = leaf, upto
        acquired.private -= adopted
        self.uncommitted -= adopted
        self._evict_all()

    def release(self, acquired: Acquired, now: float, output: np.ndarray | None = None) -> None:
        """Unpin a call's blocks and free its private KV; with ``output`` (the blocks its output
        completed, which continue its prompt; only once the whole prompt is committed) also
        store those."""
        self.clock = now
        self.uncommitted -= acquired.private
        acquired.private = 0
        node = leaf = acquired.leaf
        while node.parent is not None:
            self._unpin(node, now)
            node = node.parent
        if (output is not None and len(output) and self.reuse
                and acquired.committed == acquired.prompt_blocks):
            if (leaf.end == acquired.prompt_blocks and leaf.alive and not leaf.children
                    and leaf.parent is not None and leaf.tier_end[0] == len(leaf.hashes)
                    and not leaf.pins and leaf.landing is None):
                self._store(leaf, output, now)  # the run still ends at the prompt: grow it in place
            else:
                self.insert(np.concatenate([acquired.prompt, output]), now)
        self._evict_all()

    def landed(self, load_id: int) -> None:
        """A load finished: its blocks are readable in HBM (and evictable once unpinned)."""
        for node in self._landing.pop(load_id, ()):
            while node is not None and node.alive and node.landing == load_id:
                node.landing = None
                self._unpin(node, self.clock)
                node = node.parent

    def _mark_landing(self, node: Node, load_id: int) -> None:
        node.landing = load_id
        self._pin(node, self.clock)  # a block being written into may not be evicted
        self._landing.setdefault(load_id, []).append(node)

    def _pin(self, node: Node, now: float) -> None:
        if node.pins == 0:
            self.pinned += len(node.hashes)
        node.pins += 1
        node.stamp = now

    def _unpin(self, node: Node, now: float) -> None:
        node.pins -= 1
        node.stamp = now
        if node.pins == 0:
            self.pinned -= len(node.hashes)
            self._push_all(node)

    def insert(self, hashes: np.ndarray, now: float) -> None:
        """Store a block list unpinned (its missing tail goes to HBM)."""
        if not self.reuse:
            return
        self.clock = now
        path, matched, k = self.tree.match(hashes)
        if matched == len(hashes):
            return  # all there: a longer prompt already stored it (no need to split its run)
        path = self.tree.cut(path, k)
        for node in path:
            node.stamp = max(node.stamp, now)
            if node.pins == 0:
                self._push_all(node)
        parent = path[-1] if path else self.tree.root
        if parent.tier_end[0] != len(parent.hashes):
            self._raise_to_hbm(parent)  # a run below it goes to HBM: so must it (prefix order)
        node = self._store(parent, hashes[matched:], now)
        if node.pins == 0:
            self._push_all(node)
        self._evict_all()

    def _raise_to_hbm(self, node: Node) -> list[int]:
        """Move a run's blocks held in lower tiers up to HBM; returns the count from each tier."""
        moved = [0] * self.n_tiers
        if node.tier_end[0] == len(node):
            return moved
        for t in range(1, self.n_tiers):
            lo, hi = node.tier_end[t - 1], node.tier_end[t]
            moved[t] = hi - lo
            self.used[t] -= moved[t]
            self.used[0] += moved[t]
            if self.on_move is not None and moved[t]:
                self.on_move(node.hashes[lo:hi], t, 0)
        node.tier_end = [len(node)] * self.n_tiers
        return moved

    def _store(self, parent: Node, hashes: np.ndarray, now: float, max_pins: int = 0) -> Node:
        """New blocks into tier 0 below ``parent`` (growing it in place when it can)."""
        if self.on_move is not None and len(hashes):
            self.on_move(hashes, None, 0)
        node = self.tree.add(parent, hashes, now, max_pins)
        n = len(hashes)
        if node.pins:
            self.pinned += n
        self.used[0] += n
        self.stats[0].written += n
        if self.inclusive and self.n_tiers > 1:
            self.stats[1].written += n  # written through to the next tier as it is stored
            if self.on_write is not None:
                self.on_write(n, 0, 1)
        return node

    # -- eviction -------------------------------------------------------------------------
    def _push(self, node: Node, tier: int) -> None:
        heapq.heappush(self._heaps[tier], (self.policy.priority(node), next(self._seq), node))

    def _push_all(self, node: Node) -> None:
        lo = 0
        for t, end in enumerate(node.tier_end):
            if end > lo:
                self._push(node, t)
            lo = end

    def _evict_all(self) -> None:
        used, capacity = self.used, self.capacity
        if self._hbm_held() <= capacity[0]:
            return  # a lower tier grows only by what the one above evicts, so all fit
        for t in range(self.n_tiers):
            if used[t] + self._held_outside(t) > capacity[t]:
                self._evict(t)
                if len(self._heaps[t]) > 4 * self.tree.nodes + 1024:
                    self._rebuild_heap(t)

    def _held_outside(self, t: int) -> int:
        """Blocks of tier t held outside the tree (running calls' private KV, in HBM only)."""
        return self.reserved + self.uncommitted if t == 0 else 0

    def make_room(self, now: float) -> None:
        """Evict what no longer fits (after the owner changed ``reserved``)."""
        self.clock = now
        self._evict_all()

    def promote(self, hashes: np.ndarray, now: float, load_id: int | None = None) -> list[int]:
        """Bring the cached prefix of ``hashes`` into HBM without pinning it (a prefetch), as
        far as HBM has free room; returns the blocks moved up from each tier. With ``load_id``
        they are landing until ``landed(load_id)``."""
        moved = [0] * self.n_tiers
        if not self.reuse:
            return moved
        self.clock = now
        path, matched, k = self.tree.match(hashes)
        if path and k < len(path[-1]):
            path = path[:-1]  # promote whole runs only
        room = self.free_blocks()
        for node in path:
            if node.tier_end[0] == len(node):
                continue
            if len(node) - node.tier_end[0] > room:
                break  # no room to land it: what lies deeper stays down too
            for t, n in enumerate(self._raise_to_hbm(node)):
                moved[t] += n
                room -= n if t else 0
            node.stamp = now
            if load_id is not None:
                self._mark_landing(node, load_id)
            elif node.pins == 0:
                self._push_all(node)
        self._evict_all()
        return moved

    def _rebuild_heap(self, tier: int) -> None:
        """Drop stale heap entries (each touch pushes a new one)."""
        live = {id(n): n for _, _, n in self._heaps[tier] if n.alive and n.count_in_tier(tier)}
        self._heaps[tier] = [(self.policy.priority(n), next(self._seq), n) for n in live.values()]
        heapq.heapify(self._heaps[tier])

    def _note_overflow(self, t: int, held: int) -> None:
        """Tier t stays over capacity (everything left is pinned or held): remember by how much."""
        excess = int(self.used[t] + held - self.capacity[t])
        self.stats[t].overflow = max(self.stats[t].overflow, excess)

    def _evict(self, t: int, extra: int = 0) -> None:
        """Demote (or drop) leaf runs in priority order until tier t is down to its target.

        A policy may hold a run (``ttl_pin``) only while the tier is within its capacity: past
        it the pin yields, in the same order, so no tier ever holds more than it has."""
        heap = self._heaps[t]
        last = t == self.n_tiers - 1
        held = self._held_outside(t) + extra
        used, target, priority_of = self.used, self.target[t], self.policy.priority
        while used[t] + held > target:
            if not heap:
                self._note_overflow(t, held)
                return
            priority, _, node = heap[0]
            if not node.alive or node.pins or priority != priority_of(node):
                heapq.heappop(heap)
                continue  # stale entry, or in use: pushed again when released
            if (not self.policy.evictable(node, t, self.clock)
                    and used[t] + held <= self.capacity[t]):
                return  # the policy holds this run (and every later one) while there is room
            heapq.heappop(heap)
            tier_end = node.tier_end
            end = tier_end[t]
            have = node.count_in_tier(t)
            if have <= 0 or (node.children and any(c.tier_end[t] for c in node.children.values())):
                continue  # not a leaf in this tier: pushed again when its children leave
            k = min(have, math.ceil(used[t] + held - target))
            used[t] -= k
            self.stats[t].evicted += k
            parent = node.parent
            drop = last or (t == 0 and node.uses < self.admit_min_uses and not node.children
                            and tier_end[0] == len(node.hashes))
            if self.on_move is not None:
                self.on_move(node.hashes[end - k:end], t, None if drop else t + 1)
            if not drop:
                tier_end[t] = end - k
                used[t + 1] += k
                if not (self.inclusive and t == 0):
                    self.stats[t + 1].written += k
                    if self.on_write is not None:
                        self.on_write(k, t, t + 1)
                self._push(node, t + 1)
            else:
                self.stats[t].dropped += k
                if last and self.on_drop is not None:  # a run refused by admission is not handed on
                    self.on_drop(self.tree.path_hashes(node), self.clock)
                if k == len(node.hashes):
                    self.tree.remove(node)
                else:
                    self.tree.shrink(node, k)
            if k < have:
                self._push(node, t)  # blocks of it are left in this tier
            elif parent is not None and parent is not self.tree.root:
                self._push(parent, t)  # the parent may have become a leaf in this tier

    # -- the invariant checker --------------------------------------------------------------
    def check(self, running: Sequence[Acquired] = (), final: bool = False) -> None:
        """Assert the cache is physically possible (tests, and ``engine.check_invariants``):
        per tier the blocks the tree says it holds are counted, within capacity (past it only
        if every HBM block is pinned: a lone call larger than HBM), deeper blocks never in a
        faster tier than their ancestors, pins counted, every running call's committed path
        in HBM; at the end nothing pinned, reserved, private, landing or draining."""
        counts = [0] * self.n_tiers
        pinned = 0
        stack = list(self.tree.root.children.values())
        while stack:
            node = stack.pop()
            n = len(node.hashes)
            ends = node.tier_end
            assert node.alive and n > 0, "a dead or empty run in the tree"
            assert all(0 <= ends[t] <= ends[t + 1] for t in range(self.n_tiers - 1)) \
                and ends[-1] == n, f"tier ends out of order: {ends} for {n} blocks"
            for t in range(self.n_tiers):
                counts[t] += node.count_in_tier(t)
            assert node.pins >= 0, "negative pins"
            if node.pins:
                pinned += n
                assert ends[0] == n, "a pinned run is not wholly in HBM"
            if node.landing is not None:
                assert node.pins > 0, "a landing run is not pinned"
            for child in node.children.values():
                assert child.parent is node
                for t in range(self.n_tiers):
                    assert not child.tier_end[t] or ends[t] == n, \
                        f"a block in tier {t} below an ancestor that is not"
                stack.append(child)
        assert counts == self.used, f"tier counts {counts} != used {self.used}"
        assert pinned == self.pinned, f"pinned blocks {pinned} != counted {self.pinned}"
        assert min(self.reserved, self.uncommitted, self.draining) >= 0, "negative private KV"
        for t in range(self.n_tiers):
            over = self.used[t] + self._held_outside(t) > self.capacity[t]
            assert not over or (t == 0 and self.pinned == self.used[0]), \
                f"tier {self.names[t]} holds {self.used[t] + self._held_outside(t)} blocks > " \
                f"capacity {self.capacity[t]:g} with evictable blocks left"
        for acq in running:
            node, depth = acq.leaf, 0
            while node.parent is not None:
                assert node.alive and node.pins > 0 and node.tier_end[0] == len(node.hashes), \
                    "a running call's committed block is not pinned in HBM"
                depth += len(node.hashes)
                node = node.parent
            assert depth == acq.committed and acq.leaf.end == acq.committed, \
                f"a running call's path covers {depth} blocks, committed {acq.committed}"
        if final:
            assert self.pinned == 0 and self.reserved == 0 and self.uncommitted == 0, \
                f"left held at the end: pinned {self.pinned}, reserved {self.reserved}, " \
                f"private {self.uncommitted}"
            assert not self._landing and self.draining == 0, "loads or writes left in flight"


def tier_report(caches: Sequence[BlockCache], block_size: int) -> dict[str, dict[str, int]]:
    """Per tier, in tokens, summed over caches of the same tiers (one per instance)."""
    report = {}
    for t, name in enumerate(caches[0].names):
        s = [c.stats[t] for c in caches]
        report[name] = {
            "written_tokens": sum(x.written for x in s) * block_size,
            "evicted_tokens": sum(x.evicted for x in s) * block_size,
            "dropped_tokens": sum(x.dropped for x in s) * block_size,
            "loaded_tokens": sum(x.loaded for x in s) * block_size,
            "held_tokens_at_end": sum(c.used[t] for c in caches) * block_size,
            "overflow_tokens": max(x.overflow for x in s) * block_size,
        }
    return report
