"""Which instance serves a call."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from engines.specs import ConfigError
from traces.hashing import string_key

ROUTERS = ("session_affinity", "round_robin", "least_loaded", "cache_aware")


class Router:
    """``cache_aware`` takes the longest cached prefix, less ``load_weight`` blocks per unit of
    load (balanced by load)."""

    def __init__(self, policy: str, instances: int, load_weight: float = 64.0) -> None:
        if policy not in ROUTERS:
            raise ConfigError(f"unknown router {policy!r}; choose one of {', '.join(ROUTERS)}")
        self.policy = policy
        self.instances = instances
        self.load_weight = load_weight
        self._turn = itertools.cycle(range(instances))
        self._home: dict[str, int] = {}  # session_affinity: each session's instance

    def pick(self, session_id: str, load: Callable[[int], float],
             cached_blocks: Callable[[int], int] | None = None) -> int:
        """``load(i)``: how busy instance i is (lower is better); ``cached_blocks(i)``: the
        call's prefix blocks cached on instance i (for cache_aware). Both are asked only by the
        policies that use them."""
        n = self.instances
        if n == 1:
            return 0
        if self.policy == "session_affinity":
            home = self._home.get(session_id)
            if home is None:
                home = self._home[session_id] = string_key(session_id) % n
            return home
        if self.policy == "round_robin":
            return next(self._turn)
        if self.policy == "least_loaded" or cached_blocks is None:
            return min(range(n), key=lambda i: (load(i), i))
        return max(range(n), key=lambda i: (cached_blocks(i) - self.load_weight * load(i), -i))
