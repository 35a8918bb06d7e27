"""The offload engine's one event queue: every event the engine schedules, in time order.

Kinds, in the order they run at one instant: a transfer's end (a load landing, a write done),
a prefetch's start, an instance's step end. Calls arrive through ``submit``, run at once (the
runner owns the send clock). An event whose source changed after it was queued (a step cut
short by an arrival, the links re-shared when a transfer started or ended) is superseded by a
newer one: ``valid`` tells, and a superseded event is dropped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

TRANSFER, PREFETCH, STEP = 0, 1, 2

Event = tuple[float, int, int, int, Any]  # (time, kind, tie-break within the kind, sequence, payload)


class EventQueue:
    def __init__(self, valid: Callable[[float, int, Any], bool]) -> None:
        self._heap: list[Event] = []
        self._count = itertools.count()
        self._valid = valid

    def push(self, t: float, kind: int, tie: int = 0, payload: Any = None) -> None:
        heapq.heappush(self._heap, (t, kind, tie, next(self._count), payload))

    def next_time(self) -> float | None:
        """When the next valid event is (None: none left)."""
        heap = self._heap
        while heap and not self._valid(heap[0][0], heap[0][1], heap[0][4]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, t: float) -> list[tuple[int, Any]]:
        """Remove the valid events at or before ``t``: (kind, payload), in order."""
        heap, due = self._heap, []
        while heap and heap[0][0] <= t:
            at, kind, _, _, payload = heapq.heappop(heap)
            if self._valid(at, kind, payload):
                due.append((kind, payload))
        return due
