"""A radix tree over runs of chained block hashes.

Agent prompts share long prefixes and grow at the tail, so a tree whose edges are runs of
blocks stays a few nodes deep: the shared system prompt, then one run per session that grows
in place. Matching walks nodes, not blocks (see ``match``), so no Python step is spent per
block. Used by the KV block cache (with tiers and pins) and by the
provider prompt-cache model (with expiry times).
"""

from __future__ import annotations

import math

import numpy as np

_EMPTY = np.empty(0, dtype=np.uint64)


class Node:
    """A run of blocks. ``tier_end[t]`` counts the run's leading blocks held in tiers <= t
    (tiers are ordered fast to slow and a run's deeper blocks never sit in a faster tier).
    ``stamp`` is the owner's clock: last use for the KV cache, expiry for the API cache."""

    __slots__ = ("hashes", "parent", "children", "stamp", "tier_end", "pins", "alive", "end", "uses",
                 "spare", "landing")

    def __init__(self, hashes: np.ndarray, parent: Node | None, n_tiers: int, stamp: float) -> None:
        self.hashes = hashes
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.stamp = stamp
        self.tier_end = [len(hashes)] * n_tiers
        self.pins = 0
        self.uses = 0  # how many requests matched or stored this run
        self.alive = True
        self.spare: np.ndarray | None = None  # room to grow in place: ``hashes`` is its prefix
        self.landing: int | None = None  # id of the load still bringing this run into HBM
        self.end = (parent.end if parent is not None else 0) + len(hashes)  # depth after the run

    def __len__(self) -> int:
        return len(self.hashes)

    def count_in_tier(self, tier: int, upto: int | None = None) -> int:
        """Blocks of this run in ``tier`` among its first ``upto`` blocks."""
        n = len(self.hashes) if upto is None else upto
        lo = min(self.tier_end[tier - 1], n) if tier else 0
        return min(self.tier_end[tier], n) - lo


class RadixTree:
    def __init__(self, n_tiers: int = 1) -> None:
        self.n_tiers = n_tiers
        self.root = Node(_EMPTY, None, n_tiers, math.inf)
        self.nodes = 0

    def match(self, hashes: np.ndarray, start: Node | None = None) -> tuple[list[Node], int, int]:
        """Walk the longest stored prefix of ``hashes``, from the root or from ``start`` (a node
        that covers exactly the first ``start.end`` of them).

        Returns (path, matched blocks, blocks matched in the last node of the path); every node
        of the path but the last is matched whole; the path holds nodes below ``start`` only.
        Chained hashes make this cheap: equal hashes at a position mean equal prefixes up to it,
        so a run matches whole when its last block does, and otherwise a binary search finds
        where it parts.
        """
        path: list[Node] = []
        node = self.root if start is None else start
        i, n, k = node.end, len(hashes), 0
        at = hashes.item  # plain ints: faster than numpy scalars for one element at a time
        while i < n:
            child = node.children.get(at(i))
            if child is None:
                break
            run = child.hashes
            m = len(run)
            if m > n - i:
                m = n - i
            if run.item(m - 1) == at(i + m - 1):
                k = m
            else:
                lo, hi = 1, m - 1  # run[lo-1] matches, run[hi] does not
                while lo < hi:
                    mid = (lo + hi) // 2
                    if run.item(mid) == at(i + mid):
                        lo = mid + 1
                    else:
                        hi = mid
                k = lo
            path.append(child)
            i += k
            if k < len(run):
                break
            node = child
        return path, i, k

    def split(self, node: Node, k: int) -> Node:
        """Cut ``node`` after its first k blocks; the new head sits between it and its parent.

        The tail keeps the node's identity, so whoever holds the deepest node of a path can still
        walk up through every block of it.
        """
        head = Node(node.hashes[:k], node.parent, self.n_tiers, node.stamp)
        head.tier_end = [min(e, k) for e in node.tier_end]
        head.pins = node.pins
        head.uses = node.uses
        head.landing = node.landing
        parent = node.parent
        assert parent is not None
        parent.children[int(node.hashes[0])] = head
        node.hashes = node.hashes[k:]
        node.spare = None  # the halves share the old buffer: neither may grow into it
        node.tier_end = [max(e - k, 0) for e in node.tier_end]
        node.parent = head
        head.children[int(node.hashes[0])] = node
        self.nodes += 1
        return head

    def descend(self, hashes: np.ndarray) -> tuple[list[Node], int]:
        """Match, then split so the path ends exactly at the matched boundary."""
        path, matched, k = self.match(hashes)
        return self.cut(path, k), matched

    def cut(self, path: list[Node], k: int) -> list[Node]:
        """Split a matched path's last node after its first k blocks (a ``match`` result)."""
        if path and k < len(path[-1]):
            path[-1] = self.split(path[-1], k)
        return path

    def add(self, parent: Node, hashes: np.ndarray, stamp: float, max_pins: int = 0) -> Node:
        """Store ``hashes`` below ``parent`` (in tier 0): grow in place a childless leaf held
        wholly in tier 0, landed, and pinned by at most ``max_pins`` users (whoever else pins it
        must not find it longer than it was), else hang a new node."""
        if (parent is not self.root and not parent.children and parent.pins <= max_pins
                and parent.landing is None and parent.tier_end[0] == len(parent.hashes)):
            self.extend(parent, hashes)
            parent.stamp = max(parent.stamp, stamp)
            return parent
        node = Node(np.array(hashes, dtype=np.uint64), parent, self.n_tiers, stamp)
        parent.children[int(hashes[0])] = node
        self.nodes += 1
        return node

    def extend(self, node: Node, hashes: np.ndarray) -> None:
        """Grow a childless run held wholly in tier 0 by ``hashes`` (also in tier 0).

        Runs grow call after call, so they keep spare room (doubling), not a copy per call.
        """
        n, m = len(node.hashes), len(hashes)
        spare = node.spare
        if spare is None or len(spare) < n + m:
            spare = node.spare = np.empty(max(2 * (n + m), 64), dtype=np.uint64)
            spare[:n] = node.hashes
        spare[n:n + m] = hashes
        node.hashes = spare[:n + m]
        node.tier_end = [n + m] * self.n_tiers
        node.end += m

    def shrink(self, node: Node, k: int) -> None:
        """Drop the last k blocks of a childless run."""
        node.hashes = node.hashes[: len(node.hashes) - k]
        node.tier_end = [min(e, len(node.hashes)) for e in node.tier_end]
        node.end -= k

    def remove(self, node: Node) -> None:
        """Drop a childless node."""
        assert not node.children and node.parent is not None
        del node.parent.children[int(node.hashes[0])]
        node.alive = False
        self.nodes -= 1

    @staticmethod
    def path_hashes(node: Node, upto: int | None = None) -> np.ndarray:
        """The full block list from the root to ``node`` (its first ``upto`` blocks)."""
        runs = [node.hashes if upto is None else node.hashes[:upto]]
        parent = node.parent
        while parent is not None and parent.parent is not None:
            runs.append(parent.hashes)
            parent = parent.parent
        return np.concatenate(runs[::-1])
