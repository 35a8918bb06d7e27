"""The KV block cache shared by every engine: blocks keyed by chained hash, held in tiers.

Tier 0 is HBM; lower tiers (DRAM, NVMe, a remote warehouse) receive what the tier above evicts
(exclusive tiers); the last tier drops. A hit in a lower tier is loaded back into HBM. Running
requests pin their blocks. Eviction takes, per tier, the least recently used *leaf* run (a run
none of whose children still hold blocks in that tier or a faster one), tail first, so the
cached set stays prefix-closed and a deeper block never sits in a faster tier than its
ancestors. The order is a policy object, so other policies plug in (see ``EvictionPolicy``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.radix import Node, RadixTree


class EvictionPolicy:
    """Orders eviction candidates: smaller priority goes first. LRU by default."""

    name = "lru"

    def priority(self, node: Node) -> float:
        return node.stamp


POLICIES: dict[str, type[EvictionPolicy]] = {"lru": EvictionPolicy}


@dataclass
class TierStats:
    """Block counts moved per tier over a run."""

    written: int = 0  # blocks that entered the tier (inserted or demoted into it)
    evicted: int = 0  # blocks that left it by eviction
    loaded: int = 0  # blocks read from it by hits
    overflow: int = 0  # largest excess over capacity that pinned blocks forced


@dataclass
class Acquired:
    """What ``acquire`` found: hits per tier (reusable blocks only) and the pinned path's leaf."""

    leaf: Node
    hits: list[int]
    matched: int
    prompt_blocks: int

    @property
    def hit_blocks(self) -> int:
        return sum(self.hits)


class BlockCache:
    def __init__(self, capacities: Sequence[float], names: Sequence[str] | None = None,
                 policy: str = "lru") -> None:
        if not capacities:
            raise ValueError("a block cache needs at least one tier")
        if policy not in POLICIES:
            raise ValueError(f"unknown eviction policy {policy!r}; choose one of {sorted(POLICIES)}")
        self.capacity = [float(c) for c in capacities]
        self.names = list(names) if names else [f"tier{i}" for i in range(len(capacities))]
        self.n_tiers = len(self.capacity)
        self.tree = RadixTree(self.n_tiers)
        self.used = [0] * self.n_tiers
        self.stats = [TierStats() for _ in range(self.n_tiers)]
        self.policy = POLICIES[policy]()
        self._heaps: list[list[tuple[float, int, Node]]] = [[] for _ in range(self.n_tiers)]
        self._seq = itertools.count()

    # -- queries --------------------------------------------------------------------------
    def lookup(self, hashes: np.ndarray, limit: int | None = None) -> list[int]:
        """Leading blocks of ``hashes`` cached per tier (no side effects)."""
        path, matched, k = self.tree.match(hashes)
        return self._hits(path, matched if limit is None else min(matched, limit), last_k=k)

    def _hits(self, path: list[Node], limit: int, last_k: int | None = None) -> list[int]:
        hits = [0] * self.n_tiers
        if all(node.tier_end[0] == len(node) for node in path):
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

        ``reusable`` caps the blocks that count as hits (the last token is always computed);
        cached blocks past it stay cached but count as recomputed.
        """
        path, matched = self.tree.descend(hashes)
        limit = matched if reusable is None else min(matched, reusable)
        hits = self._hits(path, limit)
        for t in range(1, self.n_tiers):
            self.stats[t].loaded += hits[t]
        for node in path:  # promote every matched block into HBM
            if node.tier_end[0] == len(node):
                continue
            for t in range(1, self.n_tiers):
                moved = node.count_in_tier(t)
                self.used[t] -= moved
                self.used[0] += moved
            node.tier_end = [len(node)] * self.n_tiers
        leaf = path[-1] if path else self.tree.root
        if matched < len(hashes):
            new = hashes[matched:]
            leaf = self.tree.add(leaf, new, now)
            self.used[0] += len(new)
            self.stats[0].written += len(new)
        for node in self.tree.ancestors(leaf):
            node.pins += 1
            node.stamp = now
        self._evict_all()
        return Acquired(leaf=leaf, hits=hits, matched=matched, prompt_blocks=len(hashes))

    def release(self, acquired: Acquired, now: float, sequence: np.ndarray | None = None) -> None:
        """Unpin a request's blocks; with ``sequence`` (its prompt plus output-completed blocks)
        also store the blocks its output completed."""
        for node in self.tree.ancestors(acquired.leaf):
            node.pins -= 1
            node.stamp = now
            if node.pins == 0:
                self._push_all(node)
        if sequence is not None:
            leaf = acquired.leaf
            if (leaf.end == acquired.prompt_blocks and leaf.alive and not leaf.children
                    and leaf.parent is not None and leaf.tier_end[0] == len(leaf)):
                extra = sequence[leaf.end:]  # the run still ends at the prompt: grow it in place
                if len(extra):
                    self.tree.extend(leaf, extra)
                    self.used[0] += len(extra)
                    self.stats[0].written += len(extra)
            else:
                self.insert(sequence, now)
        self._evict_all()

    def insert(self, hashes: np.ndarray, now: float) -> None:
        """Store a block list unpinned (its missing tail goes to HBM)."""
        if self.tree.match(hashes)[1] == len(hashes):
            return  # all there: a longer prompt already stored it (no need to split its run)
        path, matched = self.tree.descend(hashes)
        for node in path:
            node.stamp = max(node.stamp, now)
            if node.pins == 0:
                self._push_all(node)
        if matched < len(hashes):
            leaf = path[-1] if path else self.tree.root
            node = self.tree.add(leaf, hashes[matched:], now)
            self.used[0] += len(hashes) - matched
            self.stats[0].written += len(hashes) - matched
            if node.pins == 0:
                self._push_all(node)
        self._evict_all()

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
        for t in range(self.n_tiers):
            if self.used[t] > self.capacity[t]:
                self._evict(t)
                if len(self._heaps[t]) > 4 * self.tree.nodes + 1024:
                    self._rebuild_heap(t)

    def _rebuild_heap(self, tier: int) -> None:
        """Drop stale heap entries (each touch pushes a new one)."""
        live = {id(n): n for _, _, n in self._heaps[tier] if n.alive and n.count_in_tier(tier)}
        self._heaps[tier] = [(self.policy.priority(n), next(self._seq), n) for n in live.values()]
        heapq.heapify(self._heaps[tier])

    def _evict(self, t: int) -> None:
        """Demote (or, from the last tier, drop) LRU leaf runs until tier t fits."""
        heap = self._heaps[t]
        last = t == self.n_tiers - 1
        while self.used[t] > self.capacity[t]:
            if not heap:
                excess = int(self.used[t] - self.capacity[t])
                self.stats[t].overflow = max(self.stats[t].overflow, excess)
                return
            priority, _, node = heapq.heappop(heap)
            if not node.alive or node.pins or priority != self.policy.priority(node):
                continue  # stale entry, or in use: pushed again when released
            have = node.count_in_tier(t)
            if have <= 0 or any(c.tier_end[t] for c in node.children.values()):
                continue  # not a leaf in this tier: pushed again when its children leave
            k = min(have, math.ceil(self.used[t] - self.capacity[t]))
            self.used[t] -= k
            self.stats[t].evicted += k
            parent = node.parent
            if not last:
                node.tier_end[t] -= k
                self.used[t + 1] += k
                self.stats[t + 1].written += k
                self._push(node, t + 1)
            elif k == len(node):
                self.tree.remove(node)
            else:
                self.tree.shrink(node, k)
            if node.alive and node.count_in_tier(t):
                self._push(node, t)
            elif parent is not None and parent is not self.tree.root:
                self._push(parent, t)  # the parent may have become a leaf in this tier

    def blocks_held(self) -> list[int]:
        return list(self.used)
