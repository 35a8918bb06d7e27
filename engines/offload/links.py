"""A link with finite bandwidth shared by the transfers on it (processor sharing)."""

from __future__ import annotations

import math

EPS_S = 1e-9  # a transfer within a nanosecond of done is done (floating-point slack)


class Link:
    """Concurrent transfers split ``bandwidth`` (bytes/s) equally; a transfer that starts while
    others run slows them down. Times are on the replay clock."""

    def __init__(self, name: str, bandwidth: float, latency_s: float = 0.0) -> None:
        self.name = name
        self.bandwidth = float(bandwidth)
        self.latency_s = float(latency_s)
        self.remaining: dict[int, float] = {}
        self.clock = 0.0
        self.busy_s = 0.0
        self.bytes_moved = 0.0

    def _progress(self, now: float) -> None:
        dt = now - self.clock
        if dt > 0 and self.remaining:
            share = self.bandwidth * dt / len(self.remaining)
            for key in self.remaining:
                self.remaining[key] -= share
            self.busy_s += dt
        self.clock = max(self.clock, now)

    def start(self, key: int, nbytes: float, now: float) -> None:
        """Begin moving ``nbytes`` (the link's latency is charged as extra bytes' worth)."""
        self._progress(now)
        self.remaining[key] = nbytes + self.latency_s * self.bandwidth
        self.bytes_moved += nbytes

    def next_completion(self) -> float:
        if not self.remaining:
            return math.inf
        return self.clock + min(self.remaining.values()) * len(self.remaining) / self.bandwidth

    def finish(self, now: float) -> list[int]:
        """Advance to ``now``; return the transfers done by then."""
        self._progress(now)
        slack = self.bandwidth * EPS_S * max(len(self.remaining), 1)
        done = [k for k, left in self.remaining.items() if left <= slack]
        for k in done:
            del self.remaining[k]
        return done

    def busy_until(self, now: float) -> float:
        """Busy time so far, counting the current stretch up to ``now``."""
        return self.busy_s + (max(now - self.clock, 0.0) if self.remaining else 0.0)
