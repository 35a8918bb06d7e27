"""The API bill of a replay. A provider's cache entry becomes readable only when the response
that writes it starts (its first token), which the runner learns only when the call finishes;
so the bill is made from the runner's own expanded calls, in a stream that trails the replay.

Two kinds of event run in send order: a call *reads* its model's entries when it is sent
(``arrival_s`` on the replay clock) and *writes* its prompt when its first token comes
(``first_token_s``); at equal times the write goes first. A call's read runs once every call
sent before it has finished (so every write that could precede the read is known): the stream
holds the block lists of finished calls waiting on an earlier one, and of writes not yet
visible. Entries are per model: a call's model is the trace's ``model`` column, else the
configured one.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from replay.api_cache import ApiPricing, ModelPrices, ProviderPromptCache, Rules
from traces.expand import CallExpander

BILL_SCHEMA = {
    "request_id": pl.String, "api_cached_tokens": pl.Int64, "api_cache_write_tokens": pl.Int64,
    "api_cost_usd": pl.Float64, "reported_cached_tokens": pl.Int64,
    "reported_cache_write_tokens": pl.Int64, "reported_api_cost_usd": pl.Float64,
}
_CALL = operator.itemgetter("request_id", "kept_blocks", "input_tokens", "output_tokens", "model",
                            "cache_ttl_s", "reported_cached_tokens", "reported_cache_write_tokens")


@dataclass
class Biller:
    pricing: ApiPricing
    models: ModelPrices
    block_size: int
    warm_start: bool = True  # recorded traces: what a chain's first call reports reading was cached before

    def stream(self) -> BillStream:
        """A bill fed by a replay's send and finish hooks (``BillStream.on_send``, ``on_finish``)."""
        return BillStream(self)

    def bill(self, calls: pl.DataFrame, times: pl.DataFrame) -> pl.DataFrame:
        """The bill of calls replayed elsewhere: one row per call of ``times`` (request_id,
        arrival_s, first_token_s: the send and first-token times). ``calls``: the trace's calls
        (the runner's prepared table, with new_block_hashes), expanded here in send order."""
        sent = (calls.join(times.select("request_id", "arrival_s", "first_token_s"), on="request_id",
                           suffix="_sent")
                     .sort("arrival_s_sent", "row"))
        expander = CallExpander(sent, self.block_size)
        stream = self.stream()
        for i, call in enumerate(sent.drop("new_block_hashes").iter_rows(named=True)):
            try:
                blocks, _ = expander.expand_call(i, call)
            except KeyError:  # its parent never finished (an interrupted replay): no bill
                continue
            stream.finished(call, call["row"], call["arrival_s_sent"], call["first_token_s"], blocks)
        return stream.close()


class BillStream:
    """The bill of one replay, made as it runs. Calls are ordered by (send time, trace row),
    as sent; a call is billed once every call before it has finished."""

    def __init__(self, biller: Biller) -> None:
        self.b = biller
        self._unfinished: dict[int, tuple[float, int]] = {}  # trace row -> its (send, row) key
        self._oldest: list[tuple[float, int]] = []  # keys of sent calls, finished ones lazily dropped
        self._ready: list[tuple[float, int, Mapping[str, Any], float, np.ndarray]] = []
        self._last_send = -np.inf
        self._pending: list[tuple[float, int, str, np.ndarray, float, int]] = []  # writes not yet visible
        self._order = 0
        self._caches: dict[str, ProviderPromptCache] = {}
        self._terms: dict[tuple[str | None, float], Rules] = {}
        self._out: list[tuple] = []

    # -- the runner's hooks -----------------------------------------------------------------
    def on_send(self, call: Mapping[str, Any], request: Any, t: float) -> None:
        self.sent(call["row"], t)

    def on_finish(self, call: Mapping[str, Any], request: Any, done: Any) -> None:
        self.finished(call, call["row"], request.arrival_s, done.first_token_s, request.blocks)

    # -- the stream -------------------------------------------------------------------------
    def sent(self, row: int, t: float) -> None:
        """Call ``row`` was sent at ``t``. A simulated replay sends in time order; a call sent
        earlier than one already billed (a real server's clock) is billed when it can be, late."""
        key = (t, row)
        self._unfinished[row] = key
        heapq.heappush(self._oldest, key)
        self._last_send = max(self._last_send, t)
        self._bill_ready(final=False)

    def finished(self, call: Mapping[str, Any], row: int, t: float, first_token_s: float,
                 blocks: np.ndarray) -> None:
        """Call ``row`` (``call``: its trace fields), sent at ``t`` with prompt ``blocks``,
        emitted its first token at ``first_token_s``."""
        self._unfinished.pop(row, None)
        heapq.heappush(self._ready, (t, row, call, first_token_s, blocks))
        self._bill_ready(final=False)

    def close(self) -> pl.DataFrame:
        """Bill what finished (calls still unfinished, after an interruption, get no row)."""
        self._bill_ready(final=True)
        return pl.DataFrame(self._out, schema=BILL_SCHEMA, orient="row")

    def abort(self) -> None:
        """Nothing to stop: the stream runs in this process (``replay.bill_process`` has one)."""

    def _bill_ready(self, final: bool) -> None:
        """Bill finished calls, oldest first, while no call sent before them is unfinished and
        no call can still be sent at or before their send time."""
        ready, oldest, unfinished = self._ready, self._oldest, self._unfinished
        while ready:
            t, row = ready[0][0], ready[0][1]
            if not final:
                while oldest and unfinished.get(oldest[0][1]) != oldest[0]:
                    heapq.heappop(oldest)
                if t >= self._last_send or (oldest and oldest[0] < (t, row)):
                    return
            _, _, call, first, blocks = heapq.heappop(ready)
            self._bill(call, t, first, blocks)

    def _bill(self, call: Mapping[str, Any], t: float, first: float, blocks: np.ndarray) -> None:
        """One call's read at ``t`` (after the writes visible by then) and its write at ``first``."""
        b = self.b
        pending = self._pending
        while pending and pending[0][0] <= t:
            at, _, key, written, w_ttl, live = heapq.heappop(pending)
            self._caches[key].write(written, at, w_ttl, live)
        rid, kept, inp, outp, model, trace_ttl, rep_read, rep_write = _CALL(call)
        key = model or b.pricing.model
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = ProviderPromptCache(b.pricing, b.block_size)
        ttl = b.pricing.ttl_s if trace_ttl is None else trace_ttl
        rules = self._terms.get((model, ttl))
        if rules is None:
            rules = self._terms[model, ttl] = b.models.rules(model, ttl, b.pricing.rules(ttl))
        if b.warm_start and rep_read and kept == 0:
            cache.write(blocks[: rep_read // b.block_size], t, ttl)
        cached, live = cache.read(blocks, t, inp, ttl, rules)
        charge = cache.charge(cached, inp, outp, rules)
        if inp >= rules.min_tokens:
            heapq.heappush(pending, (first, self._order, key, blocks, ttl, live))
        self._order += 1
        reported = None if rep_read is None else b.models.reported_cost(
            model, inp, rep_read, rep_write or 0, outp, trace_ttl)
        self._out.append((rid, *charge, rep_read, rep_write, reported))
