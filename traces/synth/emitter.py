"""Turns a generator's calls into trace rows with nominal timing.

A call's arrival is its parent's nominal finish plus think_s, where the nominal finish is the
arrival plus ``base_s + output_tokens / decode_tokens_per_s``: a stand-in model so recorded-style
send times are consistent; replay in closed mode re-times calls on the engine under test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from traces.io import TraceWriter
from traces.synth.chain import Chain


@dataclass(frozen=True)
class Call:
    request_id: str
    arrival_s: float
    finish_s: float


class SessionEmitter:
    """Numbers one session's calls and writes their rows."""

    def __init__(self, writer: TraceWriter, workload: str, session_id: str, start_s: float,
                 latency: Mapping[str, Any]) -> None:
        self.writer = writer
        self.workload = workload
        self.session_id = session_id
        self.start_s = start_s
        self.base_s = float(latency["base_s"])
        self.decode_tokens_per_s = float(latency["decode_tokens_per_s"])
        self.turn = 0

    def call(self, chain: Chain, agent: str, parent: Call | None, think_s: float,
             output_tokens: int) -> Call:
        """Emit a call whose prompt is the chain's whole stream, then append its output."""
        kept, new, segments = chain.prompt()
        input_tokens = chain.length
        request_id = f"{self.session_id}-{self.turn:04d}"
        arrival = (parent.finish_s if parent else self.start_s) + think_s
        self.writer.add(
            new,
            segments,
            session_id=self.session_id,
            request_id=request_id,
            parent_id=parent.request_id if parent else None,
            turn=self.turn,
            agent=agent,
            workload=self.workload,
            arrival_s=arrival,
            think_s=think_s,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            kept_blocks=kept if parent else 0,
        )
        self.turn += 1
        chain.output(request_id, input_tokens, output_tokens)
        finish = arrival + self.base_s + output_tokens / self.decode_tokens_per_s
        return Call(request_id, arrival, finish)
