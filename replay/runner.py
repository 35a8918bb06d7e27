"""The runner: reads a trace, decides when each call is sent, drives an engine, records results.

open mode sends each call at its (scaled) arrival_s; closed mode sends a session's root calls at
their arrival_s and every other call think_s after its parent finished on the engine under
test. Calls are expanded to full block lists as they are sent, so memory follows the calls in
flight. Ctrl-C stops sending between two turns of the loop (a second press at once); what
finished is kept, each call with all its records.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from engines.base import Completion, Engine, Request
from engines.specs import ConfigError
from replay.interrupt import CtrlC
from traces.errors import TraceError
from traces.expand import CallExpander
from traces.hashing import string_key
from traces.io import read_meta, scan

MODES = ("open", "closed")
COLUMNS = ["session_id", "request_id", "parent_id", "turn", "workload", "arrival_s", "think_s",
           "input_tokens", "output_tokens", "kept_blocks", "new_block_hashes",
           "reported_cached_tokens", "reported_cache_write_tokens", "cache_ttl_s", "model"]


@dataclass(frozen=True)
class ReplayOptions:
    mode: str = "closed"
    time_scale: float = 1.0
    session_rate_per_s: float | None = None
    sample_sessions: int | None = None
    sample_ratio: float | None = None
    limit: int | None = None
    seed: int = 0
    progress: bool = True
    progress_label: str = "replay"  # the bar's name ("no-reuse baseline" for the second simulation)
    shards: int = 1  # replay only the sessions whose id hashes to ``shard`` (of ``shards``)
    shard: int = 0

    def check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"replay.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.time_scale > 0:
            raise ConfigError(f"replay.time_scale must be > 0, got {self.time_scale}")
        if self.session_rate_per_s is not None and not self.session_rate_per_s > 0:
            raise ConfigError("replay.session_rate_per_s must be > 0")
        if self.sample_sessions is not None and self.sample_ratio is not None:
            raise ConfigError("set replay.sample.sessions or replay.sample.ratio, not both")
        if self.sample_ratio is not None and not 0 < self.sample_ratio <= 1:
            raise ConfigError("replay.sample.ratio must be in (0, 1]")
        if self.sample_sessions is not None and self.sample_sessions < 1:
            raise ConfigError("replay.sample.sessions must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("replay.limit must be >= 1")
        if self.shards < 1 or not 0 <= self.shard < self.shards:
            raise ConfigError(f"replay.shard must be in [0, replay.shards) = [0, {self.shards}), "
                              f"got {self.shard}")


def prepare_calls(path: str, opts: ReplayOptions) -> pl.DataFrame:
    """The calls to replay, with their send-clock arrival and think times, in arrival order."""
    lf = scan(path).select(COLUMNS).with_row_index("row")
    rng = np.random.default_rng(opts.seed)
    if opts.sample_sessions is not None or opts.sample_ratio is not None:
        sessions = lf.select(pl.col("session_id").unique().sort()).collect().to_series()
        k = opts.sample_sessions if opts.sample_sessions is not None else \
            max(1, round(opts.sample_ratio * len(sessions)))
        keep = sessions.gather(np.sort(rng.choice(len(sessions), size=min(k, len(sessions)),
                                                  replace=False)))
        lf = lf.filter(pl.col("session_id").is_in(keep.implode()))
    start = pl.col("arrival_s").min().over("session_id")
    offset = (pl.col("arrival_s") - start) * opts.time_scale
    if opts.session_rate_per_s is not None:
        order = lf.group_by("session_id").agg(pl.col("arrival_s").min().alias("start"),
                                              pl.col("row").min().alias("first_row"))
        order = order.sort("start", "first_row").collect()
        new_start = np.cumsum(rng.exponential(1.0 / opts.session_rate_per_s, order.height))
        starts = pl.DataFrame({"session_id": order["session_id"], "new_start": new_start - new_start[0]})
        lf = lf.join(starts.lazy(), on="session_id").with_columns(arrival_s=pl.col("new_start") + offset)
    else:
        lf = lf.with_columns(arrival_s=start * opts.time_scale + offset)
    lf = lf.with_columns(think_s=pl.col("think_s") * opts.time_scale)
    if opts.shards > 1:  # after the arrivals are drawn, so every shard keeps its sessions' times
        lf = lf.filter(pl.col("session_id").map_elements(lambda s: shard_of(s, opts.shards),
                                                         return_dtype=pl.Int64) == opts.shard)
    calls = lf.sort("arrival_s", "row").collect()
    if opts.mode == "open" and opts.limit is not None:
        calls = calls.head(opts.limit)
    return calls


def shard_of(session_id: str, shards: int) -> int:
    """The shard that replays a session: a stable hash of its id (never Python's seeded hash), so
    every process agrees and parent links and think times stay inside one shard."""
    return string_key(session_id) % shards


def check_links(path: str, calls: pl.DataFrame) -> None:
    """Every request id once, every parent in the trace: a broken link would silently drop the
    calls after it (closed mode) or fail mid-replay."""
    def fail(bad: pl.DataFrame, reason: str) -> None:
        r = bad.row(0, named=True)
        raise TraceError(f"{path}: row {r['row']} (request_id {r['request_id']}): {reason.format(**r)}"
                         + (f" (and {bad.height - 1} more)" if bad.height > 1 else ""))

    dup = calls.filter(pl.col("request_id").is_duplicated())
    if dup.height:
        fail(dup, "request_id: appears more than once")
    orphans = calls.filter(pl.col("parent_id").is_not_null()
                           & ~pl.col("parent_id").is_in(calls["request_id"].implode()))
    if orphans.height:
        fail(orphans, "parent_id: {parent_id!r} is not a request of the trace")


def expandable_calls(path: str, opts: ReplayOptions,
                     block_size: int) -> tuple[pl.DataFrame, CallExpander, list[dict[str, Any]]]:
    """The calls to replay (``prepare_calls``, links checked), their block expander, and their
    rows as dicts without the hash lists: what the replay and the bill's process start from."""
    calls = prepare_calls(path, opts)
    check_links(path, calls)
    return calls, CallExpander(calls, block_size), calls.drop("new_block_hashes").to_dicts()


@dataclass
class ReplayResult:
    sent: int = 0
    finished: int = 0
    interrupted: bool = False
    engine_stats: dict[str, Any] = field(default_factory=dict)


Recorder = Callable[[dict[str, Any], Request, Completion], None]
Sender = Callable[[dict[str, Any], Request, float], Any]


def replay(path: str, engine: Engine, opts: ReplayOptions, on_send: Sender | None,
           on_finish: Recorder, ctrl_c: CtrlC | None = None) -> ReplayResult:
    """Replay the trace at ``path`` through ``engine``.

    ``on_send(call, request, t)`` (if given) runs when a call is sent, in send order;
    ``on_finish(call, request, completion)`` runs when it finishes. ``ctrl_c``: the caller's
    started Ctrl-C handler, when its press should also stop what the caller does after the
    replay (a press before the loop's first turn stops it there); else the loop has its own.
    """
    opts.check()
    meta = read_meta(path)
    calls, expander, rows = expandable_calls(path, opts, meta.block_size)
    n = calls.height
    children: dict[str, list[int]] = {}
    queue: list[tuple[float, int, int]] = []
    seq = itertools.count()
    if opts.mode == "open":
        queue = [(r["arrival_s"], next(seq), i) for i, r in enumerate(rows)]
    else:
        for i, r in enumerate(rows):
            if r["parent_id"] is None:
                queue.append((r["arrival_s"], next(seq), i))
            else:
                children.setdefault(r["parent_id"], []).append(i)
    heapq.heapify(queue)
    limit = opts.limit if opts.limit is not None else math.inf
    expect = getattr(engine, "expect", None)
    send_due = getattr(engine, "send_due", None)  # a real-time engine waits for events only until then
    in_flight: dict[str, tuple[int, Request]] = {}
    result = ReplayResult()
    # shown off a terminal too (a log, nohup, CI), there every 10 s: a slow engine is seen moving
    interactive = sys.stderr.isatty()
    bar = tqdm(total=min(n, limit), unit="call", desc=opts.progress_label, disable=not opts.progress,
               mininterval=0.1 if interactive else 10.0, ncols=None if interactive else 80)
    gc.freeze()  # the calls table lives through the loop: keep the collector from rescanning it
    own_ctrl_c = ctrl_c is None
    ctrl_c = ctrl_c or CtrlC().start()
    try:
        while True:
            if ctrl_c.pressed:  # between two turns: every finished call's hooks ran whole
                raise KeyboardInterrupt
            t_send = queue[0][0] if queue and result.sent < limit else math.inf
            if send_due is not None:
                send_due(t_send)
            t_event = engine.next_event_time()
            t_event = math.inf if t_event is None else t_event
            if t_send == math.inf and t_event == math.inf:
                if in_flight:  # nothing left to send or run, yet these never finished
                    rid = next(iter(in_flight))
                    raise RuntimeError(f"engine {type(engine).__name__} went idle with {len(in_flight)} "
                                       f"calls unfinished (e.g. {rid}): an engine bug")
                break
            if t_event <= t_send:
                for done in engine.advance(t_event):
                    i, request = in_flight.pop(done.request_id)
                    on_finish(rows[i], request, done)
                    result.finished += 1
                    bar.update(1)
                    for child in children.pop(done.request_id, ()):
                        send = done.finish_s + rows[child]["think_s"]
                        heapq.heappush(queue, (send, next(seq), child))
                        if expect is not None:  # the engine may prefetch the child's prefix
                            expect(request, send)
                continue
            t, _, i = heapq.heappop(queue)
            r = rows[i]
            blocks, output = expander.expand_call(i, r)
            request = Request(r["request_id"], r["session_id"], r["turn"], r["workload"], t,
                              r["input_tokens"], r["output_tokens"], blocks, meta.block_size, output)
            if on_send is not None:
                on_send(r, request, t)
            engine.submit(request, t)
            in_flight[r["request_id"]] = (i, request)
            result.sent += 1
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if own_ctrl_c:
            ctrl_c.stop()
        gc.unfreeze()
        bar.close()
    result.engine_stats = engine.stats()
    return result
