"""One serving instance's state and its scheduler: iteration-level continuous batching over a
tiered block cache.

Each step decodes one token for every running sequence past its prefill, then spends the rest
of the token budget on prefill chunks, admitting waiting calls FCFS while the budget, the cap
on running sequences and free KV allow. Step time comes from ``Roofline.step_s``. A stretch in
which only decode runs and nothing can change is planned as one block of steps
(fast-forward) and cut short if a call arrives or a load finishes inside it. The scheduler
reads an instance's state and returns a plan; the engine carries it out.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from engines.base import Request
from engines.kv_cache import Acquired, BlockCache
from engines.roofline import Roofline


class Status(enum.Enum):
    """Where a call is in its life on an instance."""

    WAITING = "waiting"  # queued, holds nothing
    LOADING = "loading"  # admitted; cached KV it found is still landing
    PREFILLING = "prefilling"
    DECODING = "decoding"
    PREEMPTED = "preempted"  # back in the queue; keeps only what it entered in the tree
    FINISHED = "finished"


@dataclass(eq=False)  # identity, not field-by-field comparison: calls are looked up in lists
class Seq:
    """A call inside an instance."""

    request: Request
    blocks: object  # the prompt's block list at the engine's block size
    arrival_s: float
    target_tokens: int = 0  # tokens whose KV must exist before it decodes (its prompt, at first)
    acquired: Acquired | None = None
    prefill_left: int = 0
    context: int = 0  # tokens whose KV exists (cached, loaded or computed)
    decode_left: int = 0
    private_blocks: int = 0  # decode KV outside the shared tree
    loads_pending: int = 0
    start_s: float | None = None
    first_token_s: float | None = None
    reused: dict[str, int] = field(default_factory=dict)
    loaded_bytes: float = 0.0
    load_s: float = 0.0
    gpu_s: float = 0.0
    preemptions: int = 0
    swapped_tokens: int = 0  # KV written to the next tier by a swap-out, to load back
    blocked_need: int | None = None  # HBM blocks it needed when it last failed to fit
    prefilled: int = 0  # tokens computed over all admissions
    recomputed: int = 0  # of those, positions it had computed before (after a preemption)
    computed_upto: int = 0  # furthest position it has computed in any admission
    status: Status = Status.WAITING
    swap_out_pending: bool = False  # preempted in swap mode, KV still being written out
    load_started_s: float = 0.0
    # disaggregated decode: the prompt's KV (bytes, whole instance) comes over the link from a
    # prefill instance's resource ``transfer_src`` at admission, instead of being prefilled here
    transfer_bytes: float = 0.0
    transfer_src: object = None


@dataclass
class Step:
    start_s: float
    step_s: float
    steps: int
    chunks: list[tuple[Seq, int]]
    decoding: list[Seq]

    @property
    def end_s(self) -> float:
        return self.start_s + self.step_s * self.steps


class Instance:
    """One serving instance's state: its block cache, its queue, its running calls and the step
    in progress. The ``Scheduler`` decides what it does next; the engine carries that out."""

    def __init__(self, index: int, cache: BlockCache, block_size: int, tp: int) -> None:
        self.index = index
        self.cache = cache
        self.bs = block_size
        self.tp = tp
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.step: Step | None = None

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    def interrupt(self, now: float) -> None:
        """Cut a block of decode steps at the first step boundary at or after ``now``."""
        st = self.step
        if st is None or st.steps <= 1 or st.chunks:
            return
        done = max(1, math.ceil((now - st.start_s) / st.step_s - 1e-9)) if st.step_s > 0 else 1
        st.steps = min(st.steps, done)

    @staticmethod
    def emit_first_token(s: Seq, now: float) -> None:
        s.status = Status.DECODING
        s.first_token_s = now
        s.decode_left = max(s.request.output_tokens - 1, 0)

    # -- applying a finished step -----------------------------------------------------------
    def apply(self) -> tuple[float, list[Seq], int]:
        """Account the finished step; returns (end time, finished calls, new private blocks)."""
        st = self.step
        assert st is not None
        end = st.end_s
        busy = st.step_s * st.steps
        share = busy * self.tp / max(len(st.chunks) + len(st.decoding), 1)
        finished = []
        grown = 0
        for s, c in st.chunks:
            s.recomputed += max(0, min(s.context + c, s.computed_upto) - s.context)
            s.prefill_left -= c
            s.context += c
            s.computed_upto = max(s.computed_upto, s.context)
            s.prefilled += c
            s.gpu_s += share
            if s.prefill_left > 0:
                continue
            if s.first_token_s is None:
                if s.loads_pending:
                    continue  # overlapped prefill done; the first token waits for the loads
                self.emit_first_token(s, end)
            if s.decode_left == 0:
                finished.append(s)
        for s in st.decoding:
            before = s.context
            s.context += st.steps
            s.computed_upto = max(s.computed_upto, s.context)
            s.decode_left -= st.steps
            s.gpu_s += share
            new_blocks = s.context // self.bs - before // self.bs
            s.private_blocks += new_blocks
            grown += new_blocks
            if s.decode_left == 0:
                finished.append(s)
        for s in finished:
            self.running.remove(s)
        self.step = None
        return end, finished, grown


@dataclass
class Plan:
    """What an instance does next: try to admit ``admit`` (the head of its queue), or run
    ``step`` (None: nothing to run)."""

    admit: Seq | None = None
    step: Step | None = None


class Scheduler:
    """Iteration-level continuous batching, as a function of an instance's state: it reads
    the instance (and its cache's free room) and returns a plan; it changes nothing. The engine
    admits (acquires KV, starts loads), preempts and runs steps as told, and asks again."""

    def __init__(self, roofline: Roofline, block_size: int, max_batched_tokens: int, max_running: int,
                 overlap_load: bool) -> None:
        self.roofline = roofline
        self.bs = block_size
        self.max_batched_tokens = max_batched_tokens
        self.max_running = max_running
        self.overlap_load = overlap_load

    def ready(self, seq: Seq) -> bool:
        """May it prefill now (its loads landed, or they overlap the prefill)?"""
        return seq.loads_pending == 0 or self.overlap_load

    def plan(self, inst: Instance, now: float, admitted: int = 0, blocked: bool = False,
             next_external_s: float = math.inf) -> Plan:
        """The instance's next move at ``now``. ``admitted``: calls admitted while planning this
        step (the last of ``running``: they prefill after the others and do not decode in it);
        ``blocked``: the head of the queue did not fit (FCFS: nobody behind it goes first);
        ``next_external_s``: the next event outside the instance (a transfer's end, a
        prefetch), which ends a block of decode steps.

        Each step decodes one token for every running call past its prefill, then spends the
        rest of the token budget on prefill chunks, FCFS, and admits the queue's head while
        budget and the cap on running calls allow."""
        running = inst.running
        planned = running[:len(running) - admitted]
        decoding: list[Seq] = []
        prefilling: list[Seq] = []
        ctx_sum, first_finish = 0, math.inf
        for s in planned:
            if s.prefill_left == 0:
                if s.decode_left > 0:
                    decoding.append(s)
                    ctx_sum += s.context
                    if s.decode_left < first_finish:
                        first_finish = s.decode_left
            elif self.ready(s):
                prefilling.append(s)
        prefilling += [s for s in running[len(planned):] if s.prefill_left > 0 and self.ready(s)]
        budget = self.max_batched_tokens - len(decoding)
        chunks: list[tuple[Seq, int]] = []
        for s in prefilling:
            if budget <= 0:
                break
            c = min(s.prefill_left, budget)
            chunks.append((s, c))
            budget -= c
        if inst.waiting and budget > 0 and len(running) < self.max_running and not blocked:
            return Plan(admit=inst.waiting[0])
        if not chunks and not decoding:
            return Plan()
        mean_ctx = ctx_sum / len(decoding) if decoding else 0.0
        if chunks:
            step_s = self.roofline.step_s([(c, s.context) for s, c in chunks], len(decoding), mean_ctx)
            return Plan(step=Step(now, step_s, 1, chunks, decoding))
        # only decode runs and whoever waits cannot be admitted until a call finishes (or an
        # outside event): fast-forward to the first finish or that event
        step_s = self.roofline.step_s([], len(decoding), mean_ctx)
        steps = int(first_finish)
        if next_external_s < math.inf and step_s > 0:
            steps = max(1, min(steps, math.ceil((next_external_s - now) / step_s)))
        if inst.cache.free_blocks() < len(decoding) * 2:  # KV nearly full: block boundary by boundary
            steps = min(steps, min(self.bs - s.context % self.bs for s in decoding))
        mean_ctx += (steps - 1) / 2  # contexts grow one token a step: the mean is exact
        step_s = self.roofline.step_s([], len(decoding), mean_ctx)
        return Plan(step=Step(now, step_s, steps, chunks, decoding))

    def victim(self, inst: Instance) -> Seq | None:
        """The call to preempt when the running calls' KV outgrew HBM (not counting what
        drains: that frees itself): the latest admitted, while another runs."""
        cache = inst.cache
        if cache.pinned + cache.reserved + cache.uncommitted > cache.capacity[0] and len(inst.running) > 1:
            return inst.running[-1]
        return None
