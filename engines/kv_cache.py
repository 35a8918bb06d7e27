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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engines.radix import Node, RadixTree


class EvictionPolicy:
    """LRU: the least recently used leaf run goes first."""

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

    def evictable(self, node: Node, tier: int, now: float) -> bool:
        return tier > 0 or node.stamp + self.params.get("ttl_s", 0.0) <= now


class SessionAwarePolicy(EvictionPolicy):
    """LRU, but a run that several sessions share (one with two or more children, such as a
    system prompt) counts as ``shared_bonus_s`` younger, so idle sessions' own runs go first."""

    def priority(self, node: Node) -> float:
        shared = len(node.children) >= 2
        return node.stamp + (self.params.get("shared_bonus_s", 0.0) if shared else 0.0)


POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": EvictionPolicy, "ttl_pin": TtlPinPolicy, "session_aware": SessionAwarePolicy}


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
    """What ``acquire`` found: hits per tier (reusable blocks only) and the pinned path's leaf."""

    leaf: Node
    hits: list[int]
    matched: int
    prompt: np.ndarray  # the block list acquired

    @property
    def prompt_blocks(self) -> int:
        return len(self.prompt)

    @property
    def hit_blocks(self) -> int:
        return sum(self.hits)


class BlockCache:
    """``capacities`` in blocks, fast tier first.

    ``reserved`` blocks of tier 0 belong to running sequences outside the tree (their decode KV).
    ``admit_min_uses``: a leaf run used fewer times is dropped from HBM instead of written down.
    ``inclusive``: blocks are written to the next tier when stored (write-through), so demotion
    moves nothing; ``on_drop(hashes)`` receives runs the last tier lets go (full block lists).
    ``on_move(hashes, src, dst)`` hears of every block that enters or leaves a tier (src None:
    newly stored; dst None: dropped), for an engine that holds the real KV (engines.torch_engine).
    ``headroom``: once a tier overflows, evict until this fraction of it (whole blocks, rounded
    down) is free, so evictions come in batches rather than a few blocks at every store (the
    low/high watermarks of an OS page cache; 0 evicts exactly the excess).
    """

    def __init__(self, capacities: Sequence[float], names: Sequence[str] | None = None,
                 policy: str = "lru", policy_params: dict[str, float] | None = None,
                 admit_min_uses: int = 0, inclusive: bool = False,
                 on_drop: Callable[[np.ndarray, float], None] | None = None,
                 on_move: Callable[[np.ndarray, int | None, int | None], None] | None = None,
                 headroom: float = 0.0) -> None:
        if not capacities:
            raise ValueError("a block cache needs at least one tier")
        if policy not in POLICIES:
            raise ValueError(f"unknown eviction policy {policy!r}; choose one of {sorted(POLICIES)}")
        if not 0.0 <= headroom < 1.0:
            raise ValueError(f"cache.eviction_headroom must be in [0, 1), got {headroom}")
        self.capacity = [float(c) for c in capacities]
        self.target = [c if math.isinf(c) else c - math.floor(headroom * c) for c in self.capacity]
        self.names = list(names) if names else [f"tier{i}" for i in range(len(capacities))]
        self.n_tiers = len(self.capacity)
        self.tree = RadixTree(self.n_tiers)
        self.used = [0] * self.n_tiers
        self.pinned = 0  # blocks of pinned runs (all in tier 0)
        self.reserved = 0
        self.stats = [TierStats() for _ in range(self.n_tiers)]
        self.policy = POLICIES[policy](**(policy_params or {}))
        self.admit_min_uses = int(admit_min_uses)
        self.inclusive = bool(inclusive)
        self.on_drop = on_drop
        self.on_move = on_move
        self.clock = 0.0
        self._heaps: list[list[tuple[float, int, Node]]] = [[] for _ in range(self.n_tiers)]
        self._seq = itertools.count()

    # -- queries --------------------------------------------------------------------------
    def lookup(self, hashes: np.ndarray, limit: int | None = None) -> list[int]:
        """Leading blocks of ``hashes`` cached per tier (no side effects)."""
        path, matched, k = self.tree.match(hashes)
        return self._hits(path, matched if limit is None else min(matched, limit), last_k=k)

    def free_blocks(self) -> float:
        """Tier-0 blocks that new KV may take: capacity less pinned and reserved blocks."""
        return self.capacity[0] - self.pinned - self.reserved

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
    def acquire(self, hashes: np.ndarray, now: float, reusable: int | None = None) -> Acquired:
        """Find the cached prefix, load it into HBM, store the rest there, pin the whole path.

        ``reusable`` caps the blocks that count as hits (the last token is always computed;
        an engine that declines a slow load passes the HBM-resident prefix); cached blocks past
        it stay cached but count as recomputed.
        """
        self.clock = now
        path, matched = self.tree.descend(hashes)
        limit = matched if reusable is None else min(matched, reusable)
        hits = self._hits(path, limit)
        for t in range(1, self.n_tiers):
            self.stats[t].loaded += hits[t]
        for node in path:  # promote every matched block into HBM
            if node.tier_end[0] != len(node.hashes):
                self._raise_to_hbm(node)
        leaf = path[-1] if path else self.tree.root
        if matched < len(hashes):
            leaf = self._store(leaf, hashes[matched:], now)
        node = leaf
        while node.parent is not None:  # pin the path, root excluded
            if node.pins == 0:
                self.pinned += len(node.hashes)
            node.pins += 1
            node.uses += 1
            node.stamp = now
            node = node.parent
        self._evict_all()
        return Acquired(leaf=leaf, hits=hits, matched=matched, prompt=hashes)

    def release(self, acquired: Acquired, now: float, output: np.ndarray | None = None) -> None:
        """Unpin a request's blocks; with ``output`` (the blocks its output completed, which
        continue its prompt) also store those."""
        self.clock = now
        node = leaf = acquired.leaf
        while node.parent is not None:
            node.pins -= 1
            node.stamp = now
            if node.pins == 0:
                self.pinned -= len(node.hashes)
                self._push_all(node)
            node = node.parent
        if output is not None and len(output):
            if (leaf.end == acquired.prompt_blocks and leaf.alive and not leaf.children
                    and leaf.parent is not None and leaf.tier_end[0] == len(leaf.hashes)):
                self._store(leaf, output, now)  # the run still ends at the prompt: grow it in place
            else:
                self.insert(np.concatenate([acquired.prompt, output]), now)
        self._evict_all()

    def insert(self, hashes: np.ndarray, now: float) -> None:
        """Store a block list unpinned (its missing tail goes to HBM)."""
        self.clock = now
        path, matched, k = self.tree.match(hashes)
        if matched == len(hashes):
            return  # all there: a longer prompt already stored it (no need to split its run)
        path = self.tree.cut(path, k)
        for node in path:
            node.stamp = max(node.stamp, now)
            if node.pins == 0:
                self._push_all(node)
        node = self._store(path[-1] if path else self.tree.root, hashes[matched:], now)
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

    def _store(self, parent: Node, hashes: np.ndarray, now: float) -> Node:
        """New blocks into tier 0 below ``parent`` (growing it in place when it can)."""
        if self.on_move is not None and len(hashes):
            self.on_move(hashes, None, 0)
        node = self.tree.add(parent, hashes, now)
        n = len(hashes)
        if node.pins:
            self.pinned += n
        self.used[0] += n
        self.stats[0].written += n
        if self.inclusive and self.n_tiers > 1:
            self.stats[1].written += n  # written through to the next tier as it is stored
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
        if used[0] + self.reserved <= capacity[0]:
            return  # a lower tier grows only by what the one above evicts, so all fit
        for t in range(self.n_tiers):
            if used[t] + (self.reserved if t == 0 else 0) > capacity[t]:
                self._evict(t)
                if len(self._heaps[t]) > 4 * self.tree.nodes + 1024:
                    self._rebuild_heap(t)

    def make_room(self, now: float) -> None:
        """Evict what no longer fits (after the owner changed ``reserved``)."""
        self.clock = now
        self._evict_all()

    def promote(self, hashes: np.ndarray, now: float) -> list[int]:
        """Bring the cached prefix of ``hashes`` into HBM without pinning it (a prefetch);
        returns the blocks moved up from each tier."""
        self.clock = now
        path, matched, k = self.tree.match(hashes)
        if path and k < len(path[-1]):
            path = path[:-1]  # promote whole runs only
        moved = [0] * self.n_tiers
        for node in path:
            if node.tier_end[0] == len(node):
                continue
            for t, n in enumerate(self._raise_to_hbm(node)):
                moved[t] += n
            node.stamp = now
            if node.pins == 0:
                self._push_all(node)
        self._evict_all()
        return moved

    def _rebuild_heap(self, tier: int) -> None:
        """Drop stale heap entries (each touch pushes a new one)."""
        live = {id(n): n for _, _, n in self._heaps[tier] if n.alive and n.count_in_tier(tier)}
        self._heaps[tier] = [(self.policy.priority(n), next(self._seq), n) for n in live.values()]
        heapq.heapify(self._heaps[tier])

    def _note_overflow(self, t: int, reserved: int) -> None:
        """Tier t stays over capacity (everything left is pinned or held): remember by how much."""
        excess = int(self.used[t] + reserved - self.capacity[t])
        self.stats[t].overflow = max(self.stats[t].overflow, excess)

    def _evict(self, t: int) -> None:
        """Demote (or drop) leaf runs in priority order until tier t is down to its target."""
        heap = self._heaps[t]
        last = t == self.n_tiers - 1
        reserved = self.reserved if t == 0 else 0
        used, target, priority_of = self.used, self.target[t], self.policy.priority
        while used[t] + reserved > target:
            if not heap:
                self._note_overflow(t, reserved)
                return
            priority, _, node = heap[0]
            if not node.alive or node.pins or priority != priority_of(node):
                heapq.heappop(heap)
                continue  # stale entry, or in use: pushed again when released
            if not self.policy.evictable(node, t, self.clock):
                self._note_overflow(t, reserved)
                return  # the policy holds this run and so every later one
            heapq.heappop(heap)
            tier_end = node.tier_end
            end = tier_end[t]
            have = node.count_in_tier(t)
            if have <= 0 or (node.children and any(c.tier_end[t] for c in node.children.values())):
                continue  # not a leaf in this tier: pushed again when its children leave
            k = min(have, math.ceil(used[t] + reserved - target))
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
