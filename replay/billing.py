"""The API bill of a replay, made in a pass after it: the runner learns a call's first token
only when the call finishes, and a provider's cache entry becomes readable only when the
response that writes it starts.

The pass re-expands the calls in send order (``traces.expand``, as the runner does) and runs
two kinds of event in time order: a call *reads* its model's entries when it is sent
(``arrival_s`` on the replay clock) and *writes* its prompt when its first token comes
(``first_token_s``); at equal times the write goes first. Only the block lists of calls
between those two moments are held. Entries are per model: a call's model is the trace's
``model`` column, else the configured one.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np
import polars as pl

from replay.api_cache import ApiPricing, ModelPrices, ProviderPromptCache, Rules
from traces.expand import CallExpander

BILL_SCHEMA = {
    "request_id": pl.String, "api_cached_tokens": pl.Int64, "api_cache_write_tokens": pl.Int64,
    "api_cost_usd": pl.Float64, "reported_cached_tokens": pl.Int64,
    "reported_cache_write_tokens": pl.Int64, "reported_api_cost_usd": pl.Float64,
}
_CALL = ["request_id", "parent_id", "kept_blocks", "input_tokens", "output_tokens", "model",
         "cache_ttl_s", "reported_cached_tokens", "reported_cache_write_tokens"]


@dataclass
class Biller:
    pricing: ApiPricing
    models: ModelPrices
    block_size: int
    warm_start: bool = True  # recorded traces: what a chain's first call reports reading was cached before

    def bill(self, calls: pl.DataFrame, times: pl.DataFrame) -> pl.DataFrame:
        """One row per call of ``times`` (request_id, arrival_s, first_token_s: the replay's
        send and first-token times) with its simulated and reported bill. ``calls``: the
        trace's calls (the runner's prepared table, with new_block_hashes)."""
        sent = (calls.join(times.select("request_id", "arrival_s", "first_token_s"), on="request_id",
                           suffix="_sent")
                     .sort("arrival_s_sent", "row"))
        expander = CallExpander(sent, self.block_size)
        bs, default_model = self.block_size, self.pricing.model
        caches: dict[str, ProviderPromptCache] = {}
        pending: list[tuple[float, int, str, np.ndarray, float, int]] = []  # writes not yet visible
        seq = itertools.count()
        out: list[tuple] = []
        rows = sent.select(*_CALL, "arrival_s_sent", "first_token_s").iter_rows()
        terms: dict[tuple[str | None, float], Rules] = {}
        for i, row in enumerate(rows):
            rid, parent, kept, inp, outp, model, trace_ttl, rep_read, rep_write, t, first = row
            try:
                blocks, _ = expander.expand(i, rid, parent, kept, inp, outp)
            except KeyError:  # an interrupted open-mode replay: its parent never finished, so no bill
                out.append((rid, None, None, None, rep_read, rep_write, None))
                continue
            while pending and pending[0][0] <= t:
                at, _, key, written, w_ttl, live = heapq.heappop(pending)
                caches[key].write(written, at, w_ttl, live)
            key = model or default_model
            cache = caches.get(key)
            if cache is None:
                cache = caches[key] = ProviderPromptCache(self.pricing, bs)
            ttl = self.pricing.ttl_s if trace_ttl is None else trace_ttl
            rules = terms.get((model, ttl))
            if rules is None:
                rules = terms[model, ttl] = self.models.rules(model, ttl, self.pricing.rules(ttl))
            if self.warm_start and rep_read and kept == 0:
                cache.write(blocks[: rep_read // bs], t, ttl)
            cached, live = cache.read(blocks, t, inp, ttl, rules)
            charge = cache.charge(cached, inp, outp, rules)
            if inp >= rules.min_tokens:
                heapq.heappush(pending, (first, next(seq), key, blocks, ttl, live))
            reported = None if rep_read is None else self.models.reported_cost(
                model, inp, rep_read, rep_write or 0, outp, trace_ttl)
            out.append((rid, *charge, rep_read, rep_write, reported))
        return pl.DataFrame(out, schema=BILL_SCHEMA, orient="row")
