"""The torch engine: replays calls on a real model with a real paged KV cache.

Admission is FCFS and reserves a call's whole KV (prompt and output) up front, so nothing is
ever preempted. A call's cached prefix (found through the shared block cache by chained hash)
is loaded into the pool if it sits in the CPU or disk tier; only the tokens after it are
prefilled, in chunks; then it decodes exactly output_tokens tokens greedily, batched with the
other running calls. Every step is timed (CUDA events on a GPU; on the CPU the wall clock, or with
``clock="cpu"`` the process's CPU time, which other processes on a shared machine barely move)
and the measured time drives the replay's virtual clock, so think time costs no wall time.
Token ids come from the hashes: a block's ids are drawn from a generator seeded by its hash (a
prompt's partial last block from its request id), so equal prefixes are equal tokens.
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.base import Completion, Request
from engines.deployment import engine_block_size
from engines.kv_cache import Acquired, BlockCache, tier_report
from engines.roofline import Roofline
from engines.specs import ConfigError, HardwareSpec, ModelSpec, check_cache_keys
from engines.torch_engine.kv_pool import KVPool, TieredKV
from engines.torch_engine.model import ModelArgs, SeqSlice, Transformer, load_hf_checkpoint
from traces.hashing import reblock, reusable_blocks, string_key


def block_tokens(h: int, block_size: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(h & (2**63 - 1))
    return torch.randint(0, vocab, (block_size,), generator=g)


def prompt_tokens(blocks: np.ndarray, request_id: str, input_tokens: int, block_size: int,
                  vocab: int, start: int = 0) -> torch.Tensor:
    """Token ids of prompt positions [start, input_tokens)."""
    parts = [block_tokens(int(h), block_size, vocab) for h in blocks[start // block_size:]]
    tail = input_tokens - len(blocks) * block_size
    if tail:
        parts.append(block_tokens(string_key(request_id + "/tail"), block_size, vocab)[:tail])
    ids = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    return ids[start % block_size:] if parts else ids


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class Timer:
    """Time of a piece of work: CUDA events on a GPU; on the CPU the wall clock or the process's
    CPU time (``clock="cpu"``: counts only this process's work, so a busy machine does not inflate
    it; with torch on one thread it equals the wall time of an idle machine). The garbage
    collector waits while a step is timed: a collection of objects the step did not make (a
    long-lived process holds many) is not the model's time."""

    def __init__(self, device: str, clock: str = "wall") -> None:
        self.cuda = device.startswith("cuda")
        self.now = CLOCKS[clock]

    def __enter__(self) -> Timer:
        self.gc_was_on = gc.isenabled()
        gc.disable()
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = self.now()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000.0
        else:
            self.seconds = self.now() - self.t0
        if self.gc_was_on:
            gc.enable()


@dataclass(eq=False)
class Call:
    request: Request
    blocks: np.ndarray
    arrival_s: float
    acquired: Acquired | None = None
    slots: torch.Tensor | None = None  # pool blocks covering every position of the call
    private: list[int] = field(default_factory=list)  # slots of its uncached prompt, then its decode
    decode_blocks: int = 0
    hit: int = 0  # leading prompt blocks found cached
    handed: set[int] = field(default_factory=set)  # private slots the cache took over
    prefilled: int = 0
    context: int = 0
    next_token: int = 0
    decoded: int = 0
    start_s: float = 0.0
    first_token_s: float | None = None
    reused: dict[str, int] = field(default_factory=dict)
    loaded_bytes: float = 0.0
    gpu_s: float = 0.0


class TorchEngine:
    def __init__(self, model: Mapping[str, Any], hardware: Mapping[str, Any], cache: Mapping[str, Any],
                 tp: int, instances: int, trace_block_size: int, block_size: int | None = None,
                 pool_blocks: int = 2048, cpu_blocks: int = 0, disk_blocks: int = 0,
                 max_batched_tokens: int = 2048, max_running: int = 16, checkpoint: str | None = None,
                 seed: int = 0, device: str = "auto", cache_output_blocks: bool = True,
                 disk_dir: str | None = None, threads: int | None = None, clock: str = "wall",
                 eviction_params: Mapping[str, float] | None = None) -> None:
        if int(instances) != 1:
            raise ConfigError("the torch engine runs one instance (instances=1)")
        if clock not in CLOCKS:
            raise ConfigError(f"engine.clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        if threads:
            torch.set_num_threads(int(threads))
        if checkpoint:
            self.model = load_hf_checkpoint(checkpoint, self.device, self.dtype)
        else:
            self.model = Transformer(ModelArgs.from_model_cfg(model))
            self.model.init_random(int(seed))
            self.model = self.model.to(self.device, self.dtype)
        self.model.eval()
        self.args = self.model.a
        self.block_size, self.factor = engine_block_size(block_size, trace_block_size)
        self.pool = KVPool(self.args, int(pool_blocks), self.block_size, self.device, self.dtype)
        self.kv = TieredKV(self.pool, Path(disk_dir) if disk_dir else Path("kv_disk"))
        check_cache_keys(cache)  # (its tiers come from pool_blocks, cpu_blocks and disk_blocks)
        capacities = [int(pool_blocks)] + [int(b) for b in (cpu_blocks, disk_blocks) if b]
        names = ["hbm", "cpu", "disk"][: len(capacities)]
        self.cache = BlockCache(capacities, names, str(cache.get("eviction", "lru")),
                                eviction_params, on_move=self.kv.move,
                                headroom=float(cache.get("eviction_headroom", 0.0)))
        self.tier_names = names
        self.max_batched_tokens = int(max_batched_tokens)
        self.max_running = int(max_running)
        self.cache_output_blocks = bool(cache_output_blocks)
        self.roofline = Roofline(ModelSpec.from_cfg(model), HardwareSpec.from_cfg(hardware), int(tp))
        self.timer = lambda: Timer(self.device, clock)  # noqa: E731
        self._warm_up()
        self.waiting: deque[Call] = deque()
        self.running: list[Call] = []
        self.clock = 0.0
        self.step_end: float | None = None
        self._finished: list[Call] = []

    def _warm_up(self) -> None:
        """One throwaway forward, so the first call's TTFT is not a cold-start artifact (lazy
        kernel selection, allocator growth)."""
        slots = torch.arange(min(4, self.pool.num_blocks), device=self.device)
        tokens = torch.zeros(min(2 * self.block_size, 128), dtype=torch.long, device=self.device)
        self.model(tokens, [SeqSlice(0, len(tokens), 0, slots)], self.pool.k, self.pool.v, self.block_size)

    # -- the protocol -----------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> None:
        blocks = reblock(request.blocks, self.factor) if self.factor > 1 else request.blocks
        self.waiting.append(Call(request, blocks, now))
        if self.step_end is None:
            self.clock = max(self.clock, now)
            self._step()

    def next_event_time(self) -> float | None:
        return self.step_end

    def advance(self, until: float) -> list[Completion]:
        done: list[Completion] = []
        while self.step_end is not None and self.step_end <= until:
            self.clock = self.step_end
            done.extend(self._complete(c) for c in self._finished)
            self._finished = []
            self._step()
        return done

    def stats(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "kv_bytes_moved": dict(self.kv.bytes_moved),
                "tiers": tier_report([self.cache], self.block_size)}

    # -- one step ---------------------------------------------------------------------------
    def _step(self) -> None:
        """Admit, prefill a chunk budget, decode every running call once; time it all."""
        with self.timer() as t:
            admitted = self._admit()
            budget = self.max_batched_tokens
            prefills = []
            for c in self.running:
                left = c.request.input_tokens - c.context
                if left > 0 and budget > 0:
                    n = min(left, budget)
                    prefills.append((c, n))
                    budget -= n
            decoding = [c for c in self.running if c.context >= c.request.input_tokens
                        and c.first_token_s is not None and c.decoded < c.request.output_tokens]
            for c, n in prefills:
                self._prefill(c, n)
            if decoding:
                self._decode(decoding)
        if not admitted and not prefills and not decoding:
            self.step_end = None
            return
        self.step_end = self.clock + t.seconds
        share = t.seconds / max(len(prefills) + len(decoding), 1)
        for c in {*(c for c, _ in prefills), *decoding}:
            c.gpu_s += share
        for c, _ in prefills:
            if c.context >= c.request.input_tokens and c.first_token_s is None:
                c.first_token_s = self.step_end
                c.decoded = 1
        for c in list(self.running):
            if c.first_token_s is not None and c.decoded >= c.request.output_tokens:
                self.running.remove(c)
                self._finished.append(c)

    def _admit(self) -> bool:
        admitted = False
        bs = self.block_size
        while self.waiting and len(self.running) < self.max_running:
            c = self.waiting[0]
            req = c.request
            in_hbm = self.cache.lookup(c.blocks)[0]
            new_blocks = len(c.blocks) - in_hbm
            private = math.ceil((req.input_tokens + req.output_tokens) / bs) - len(c.blocks)
            if new_blocks + private > self.cache.free_blocks() and self.running:
                break
            if new_blocks + private > self.pool.num_blocks:
                raise ConfigError(f"engine.pool_blocks={self.pool.num_blocks} cannot hold call "
                                  f"{req.request_id}: it needs {new_blocks + private} blocks")
            self.waiting.popleft()
            self.cache.reserved += private
            c.acquired = self.cache.acquire(c.blocks, self.clock, reusable_blocks(req.input_tokens, bs))
            self.kv.place()
            c.hit, c.decode_blocks = c.acquired.committed, private
            c.private = [self.pool.alloc() for _ in range(len(c.blocks) - c.hit + private)]
            shared = [self.kv.slots[int(h)] for h in c.blocks[:c.hit]]
            c.slots = torch.tensor(shared + c.private, dtype=torch.long, device=self.device)
            c.reused = {n: h * bs for n, h in zip(self.tier_names, c.acquired.hits, strict=True)}
            c.context = c.acquired.hit_blocks * bs
            c.loaded_bytes = sum(c.acquired.hits[1:]) * self.pool.block_bytes
            c.start_s = self.clock
            self.running.append(c)
            admitted = True
        return admitted

    def _prefill(self, c: Call, n: int) -> None:
        req = c.request
        ids = prompt_tokens(c.blocks, req.request_id, req.input_tokens, self.block_size,
                            self.args.vocab, c.context)[:n].to(self.device)
        logits = self.model(ids, [SeqSlice(0, n, c.context, c.slots)], self.pool.k, self.pool.v,
                            self.block_size)
        c.context += n
        c.prefilled += n
        self._hand_over(c, min(c.context // self.block_size, len(c.blocks)))
        if c.context >= req.input_tokens:
            c.next_token = int(logits[-1].argmax())

    def _hand_over(self, c: Call, upto: int = 0, output: np.ndarray | None = None) -> None:
        """Enter blocks the call has computed in the cache: its first ``upto`` prompt blocks
        (``commit``) or, at the end, its ``output`` blocks (``release``). The private slots that
        hold them become the cache's, unless another call entered the same block first (then
        the slot stays the call's)."""
        if output is None:
            for j in range(c.acquired.committed, upto):
                self.kv.adopt[int(c.blocks[j])] = c.private[j - c.hit]
            self.cache.commit(c.acquired, upto, self.clock)
        else:
            base = len(c.blocks) - c.hit
            for j, h in enumerate(output):
                self.kv.adopt[int(h)] = c.private[base + j]
            self.cache.release(c.acquired, self.clock, output)
        self.kv.place()
        c.handed |= self.kv.placed_private
        self.kv.placed_private.clear()
        self.kv.adopt.clear()

    def _decode(self, calls: list[Call]) -> None:
        tokens = torch.tensor([c.next_token for c in calls], dtype=torch.long, device=self.device)
        seqs = [SeqSlice(i, 1, c.context, c.slots) for i, c in enumerate(calls)]
        logits = self.model(tokens, seqs, self.pool.k, self.pool.v, self.block_size)
        nxt = logits.argmax(-1).tolist()
        for c, t in zip(calls, nxt, strict=True):
            c.context += 1
            c.decoded += 1
            c.next_token = t

    def _complete(self, c: Call) -> Completion:
        req, bs = c.request, self.block_size
        full = reblock(req.sequence_blocks(), self.factor) if self.factor > 1 else req.sequence_blocks()
        output = full[len(c.blocks): c.context // bs] if self.cache_output_blocks else full[:0]
        self.cache.reserved -= c.decode_blocks
        self._hand_over(c, output=output)  # blocks whose every position has KV
        for slot in c.private:  # what the cache did not take over goes back to the pool
            if slot not in c.handed:
                self.pool.release(slot)
        return Completion(
            request_id=req.request_id, instance=0, start_s=c.start_s,
            first_token_s=c.first_token_s if c.first_token_s is not None else self.clock,
            finish_s=self.clock, reused_tokens_by_tier=c.reused, prefilled_tokens=c.prefilled,
            loaded_bytes=c.loaded_bytes, gpu_s=c.gpu_s)
