"""The links KV moves over, shared fairly by the transfers on them.

A transfer (a flow) crosses a path of resources: a GPU's host link in one direction, a drive's
read or write bandwidth, a NIC, a warehouse's aggregate bandwidth. Concurrent flows get
max-min fair rates (progressive filling, as TCP-like sharing settles to): the scarcest
resource is split evenly among its flows, they are frozen at that rate, and the rest is shared
among the others. A flow that moves a per-GPU shard for ``weight`` GPUs at once (an instance's
tp shards going to one shared warehouse) takes ``weight`` times its rate from the resources
that all GPUs share. Rates change only when a flow starts or ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

EPS_S = 1e-9  # a flow within a nanosecond of done is done (floating-point slack)


@dataclass(eq=False)
class Resource:
    name: str
    bandwidth: float  # bytes/s
    busy_s: float = 0.0
    bytes_moved: float = 0.0
    flows: set[Flow] = field(default_factory=set)


@dataclass(eq=False)
class Flow:
    key: int
    path: tuple[tuple[Resource, float], ...]  # (resource, weight)
    remaining: float
    rate: float = 0.0


class Fabric:
    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.flows: dict[int, Flow] = {}
        self.clock = 0.0
        self._next: float | None = None

    def resource(self, name: str, bandwidth: float) -> Resource:
        """The resource called ``name``, made on first use."""
        res = self.resources.get(name)
        if res is None:
            if not bandwidth > 0:
                raise ValueError(f"link {name}: bandwidth must be > 0, got {bandwidth}")
            res = self.resources[name] = Resource(name, float(bandwidth))
        return res

    def start(self, key: int, path: list[tuple[Resource, float]], nbytes: float, latency_s: float,
              now: float) -> None:
        """Begin moving ``nbytes`` over ``path``; the latency is charged as that many seconds
        of the path's narrowest bandwidth."""
        self._progress(now)
        narrowest = min(res.bandwidth / w for res, w in path)
        flow = Flow(key, tuple(path), nbytes + (latency_s * narrowest if latency_s else 0.0))
        self.flows[key] = flow
        for res, w in path:
            res.flows.add(flow)
            res.bytes_moved += nbytes * w
        self._share()

    def next_completion(self) -> float:
        if self._next is None:
            self._next = min((self.clock + f.remaining / f.rate for f in self.flows.values() if f.rate > 0),
                             default=math.inf)
        return self._next

    def finish(self, now: float) -> list[int]:
        """Advance to ``now``; return the flows done by then."""
        self._progress(now)
        done = [k for k, f in self.flows.items() if f.remaining <= f.rate * EPS_S + 1e-6]
        for k in done:
            flow = self.flows.pop(k)
            for res, _ in flow.path:
                res.flows.discard(flow)
        if done:
            self._share()
        return done

    def busy_s(self, res: Resource, now: float) -> float:
        """Busy time so far, counting the current stretch up to ``now``."""
        return res.busy_s + (max(now - self.clock, 0.0) if res.flows else 0.0)

    def _progress(self, now: float) -> None:
        dt = now - self.clock
        if dt > 0 and self.flows:
            for f in self.flows.values():
                f.remaining -= f.rate * dt
            for res in self.resources.values():
                if res.flows:
                    res.busy_s += dt
        self.clock = max(self.clock, now)

    def _share(self) -> None:
        """Max-min fair rates by progressive filling."""
        self._next = None
        left = {res: res.bandwidth for res in self.resources.values() if res.flows}
        weight = {res: sum(w for f in res.flows for r, w in f.path if r is res) for res in left}
        unfrozen = set(self.flows.values())
        while unfrozen:
            res = min((r for r in left if weight[r] > 0), key=lambda r: left[r] / weight[r])
            rate = left[res] / weight[res]
            for f in [f for f in res.flows if f in unfrozen]:
                f.rate = rate
                unfrozen.discard(f)
                for r, w in f.path:
                    left[r] -= rate * w
                    weight[r] -= w
            del left[res]
