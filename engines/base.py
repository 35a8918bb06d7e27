"""The engine protocol: the runner submits calls one at a time, asks when the engine's next
event is, and advances it to a time, receiving the calls that finished by then.

Engines know nothing of runners or traces beyond these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(slots=True)
class Request:
    """One call as an engine sees it. ``blocks`` is the prompt's full block list at the trace's
    block size (``trace_block_size``); ``output_blocks`` the blocks its output completes after
    it (``traces.hashing.output_block_hashes``), which a child's prompt may keep."""

    request_id: str
    session_id: str
    turn: int
    workload: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    blocks: np.ndarray
    trace_block_size: int
    output_blocks: np.ndarray

    def sequence_blocks(self) -> np.ndarray:
        """Prompt blocks followed by the output-completed ones."""
        return np.concatenate([self.blocks, self.output_blocks])


@dataclass(slots=True)
class Completion:
    """What an engine reports for a finished call; times are on the replay clock (seconds)."""

    request_id: str
    instance: int
    start_s: float
    first_token_s: float
    finish_s: float
    reused_tokens_by_tier: dict[str, int]
    prefilled_tokens: int  # every token computed for the call, over all its admissions
    loaded_bytes: float
    gpu_s: float
    recomputed_tokens: int = 0  # of prefilled_tokens, those computed again after a preemption
    load_s: float = 0.0  # time spent waiting for cached KV to land from lower tiers
    preemptions: int = 0
    extra: dict[str, Any] | None = None  # values of the engine's ``extra_columns`` (the http engine)

    @property
    def reused_tokens(self) -> int:
        return sum(self.reused_tokens_by_tier.values())


class Engine(Protocol):
    """What the runner drives. Optional: ``priced_tiers``, the tiers whose KV the engine's
    stats report for storage cost (``byte_seconds_by_tier``, ``capacity_bytes_by_tier``)."""

    tier_names: list[str]

    def submit(self, request: Request, now: float) -> None:
        """Hand the engine a call sent at ``now``."""

    def next_event_time(self) -> float | None:
        """When the engine next has something to do (None: idle)."""

    def advance(self, until: float) -> list[Completion]:
        """Run the engine up to ``until``; return the calls finished by then."""

    def stats(self) -> dict[str, Any]:
        """Engine-level figures for the summary (bytes per tier, evictions, ...)."""
