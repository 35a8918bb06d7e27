"""Which instance serves a call."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from engines.specs import ConfigError
from traces.hashing import string_key

ROUTERS = ("session_affinity", "round_robin", "least_loaded")


class Router:
    def __init__(self, policy: str, instances: int) -> None:
        if policy not in ROUTERS:
            raise ConfigError(f"unknown router {policy!r}; choose one of {', '.join(ROUTERS)}")
        self.policy = policy
        self.instances = instances
        self._turn = itertools.cycle(range(instances))

    def pick(self, session_id: str, earliest_free_s: Sequence[float]) -> int:
        """``earliest_free_s``: per instance, when its next slot frees up."""
        if self.instances == 1:
            return 0
        if self.policy == "session_affinity":
            return string_key(session_id) % self.instances
        if self.policy == "round_robin":
            return next(self._turn)
        return min(range(self.instances), key=lambda i: (earliest_free_s[i], i))
