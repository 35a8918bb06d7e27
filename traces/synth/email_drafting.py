"""Synthetic email-drafting sessions: one session drafts one reply.

Prompt: the org-wide system prompt (shared by everyone), the user's own context (persona,
signature, style guide, memory; shared by that user's sessions), in a triage burst the mailbox
context shared by the burst's sessions, then the thread to answer as a document and an
instruction. The model drafts; 0-4 revision rounds follow, each after a human review pause.
Knobs and the figures they model: conf/trace/email_drafting.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from traces.io import TraceWriter
from traces.synth.chain import Chain
from traces.synth.draws import lognormal, lognormal_int, random_keys, session_starts, uniform_int
from traces.synth.emitter import SessionEmitter


class EmailDraftingGenerator:
    def __init__(self, cfg: Mapping[str, Any], rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        self.bs = int(cfg["block_size"])
        n_users = int(cfg["users"])
        self.org_key = random_keys(rng, 1)[0]
        self.user_keys = random_keys(rng, n_users)
        self.user_tokens = lognormal_int(rng, cfg["user_context_tokens"], n_users).tolist()

    def burst(self, writer: TraceWriter, first_index: int, size: int, start_s: float) -> None:
        """Several replies drafted in a row by one user, sharing mailbox context."""
        cfg, rng = self.cfg, self.rng
        user = int(rng.integers(len(self.user_keys)))
        mailbox_key = random_keys(rng, 1)[0]
        mailbox_tokens = int(lognormal_int(rng, cfg["mailbox_tokens"])) if size > 1 else 0
        t = start_s
        for k in range(size):
            session_id = f"{cfg['session_prefix']}{first_index + k:06d}"
            emit = SessionEmitter(writer, cfg["workload"], session_id, t, cfg["nominal_latency"])
            chain = Chain(self.bs)
            chain.add(self.org_key, "system", int(cfg["org_system_tokens"]), header=True)
            chain.add(self.user_keys[user], "system", int(self.user_tokens[user]), header=True)
            chain.add(mailbox_key, "document", mailbox_tokens, header=True)
            chain.add(random_keys(rng, 1)[0], "document", self._thread_tokens())
            chain.add(random_keys(rng, 1)[0], "user", int(lognormal_int(rng, cfg["instruction_tokens"])))
            call = first = emit.call(chain, "main", None, 0.0, self._draft_tokens())
            rounds = int(rng.choice(len(cfg["revision_round_probs"]), p=cfg["revision_round_probs"]))
            for _ in range(rounds):
                chain.add(random_keys(rng, 1)[0], "user", int(lognormal_int(rng, cfg["revision_tokens"])))
                think = float(lognormal(rng, cfg["review_pause_s"]))
                call = emit.call(chain, "main", call, think, self._draft_tokens())
            # the next reply of the burst starts a short while after this first draft came back
            t = first.finish_s + float(lognormal(rng, cfg["burst_gap_s"]))

    def _thread_tokens(self) -> int:
        cfg = self.cfg
        messages = int(lognormal_int(self.rng, cfg["thread_messages"]))
        return int(lognormal_int(self.rng, cfg["message_tokens"], messages).sum())

    def _draft_tokens(self) -> int:
        return int(uniform_int(self.rng, self.cfg["draft_tokens"]))


def generate(cfg: Mapping[str, Any], writer: TraceWriter, progress=None) -> None:
    rng = np.random.default_rng(int(cfg["seed"]))
    gen = EmailDraftingGenerator(cfg, rng)
    n = int(cfg["sessions"])
    sizes = []
    while sum(sizes) < n:
        sizes.append(min(int(uniform_int(rng, cfg["burst_sessions"])), n - sum(sizes)))
    starts = session_starts(rng, len(sizes), cfg["arrival"])
    index = 0
    for size, start in zip(sizes, starts, strict=True):
        gen.burst(writer, index, size, float(start))
        index += size
        if progress is not None:
            progress(index)
