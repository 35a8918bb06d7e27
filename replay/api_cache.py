"""A provider's prompt cache, simulated from the send times, and the bill it produces.

Entries are prefixes of earlier prompts (a radix tree over the trace's blocks) with an expiry
time: a write lives ``ttl_s``; a hit refreshes it (Anthropic: at no cost). A call reads the
longest live prefix, rounded down to the provider's increment; prompts shorter than the minimum
are neither read nor written. With ``write_billed`` (Anthropic's explicit caching, breakpoint at
the end of the prompt) every uncached prompt token is written at the write price; otherwise
(OpenAI, DeepSeek) uncached tokens cost plain input. Every prefix of a cached prompt counts as
readable, as if each call set breakpoints along its whole prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import polars as pl

from engines.radix import Node, RadixTree
from engines.specs import ConfigError

Tokens = TypeVar("Tokens", int, pl.Expr)


@dataclass(frozen=True)
class ApiPricing:
    provider: str
    model: str
    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float
    cache_write_per_mtok: dict[int, float]  # by TTL in seconds
    ttl_s: float
    write_billed: bool
    refresh_on_hit: bool
    min_tokens: int
    increment_tokens: int

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> ApiPricing:
        try:
            pricing = cls(
                provider=str(cfg["provider"]), model=str(cfg["model"]),
                input_per_mtok=float(cfg["input_per_mtok"]),
                output_per_mtok=float(cfg["output_per_mtok"]),
                cache_read_per_mtok=float(cfg["cache_read_per_mtok"]),
                cache_write_per_mtok={int(k): float(v) for k, v in cfg["cache_write_per_mtok"].items()},
                ttl_s=float(cfg["ttl_s"]), write_billed=bool(cfg["write_billed"]),
                refresh_on_hit=bool(cfg["refresh_on_hit"]), min_tokens=int(cfg["min_tokens"]),
                increment_tokens=int(cfg["increment_tokens"]),
            )
        except KeyError as exc:
            raise ConfigError(f"pricing.api: '{exc.args[0]}' is missing") from None
        pricing.write_price(pricing.ttl_s)
        return pricing

    def write_price(self, ttl_s: float) -> float:
        try:
            return self.cache_write_per_mtok[int(ttl_s)]
        except KeyError:
            raise ConfigError(f"pricing.api: no cache_write_per_mtok for a TTL of {ttl_s:g} s "
                              f"(have {sorted(self.cache_write_per_mtok)})") from None

    def no_reuse_cost(self, input_tokens: Tokens, output_tokens: Tokens) -> Tokens:
        """Every input token at the plain input price (ints, or polars columns of them)."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class ApiCharge(NamedTuple):
    cached_tokens: int
    written_tokens: int
    cost_usd: float


class ModelPrices:
    """Per-model list prices for billing reported usage; the longest model-name prefix wins."""

    def __init__(self, table: Mapping[str, Mapping[str, float]]) -> None:
        self.table = sorted(((k, dict(v)) for k, v in table.items()), key=lambda kv: -len(kv[0]))
        self._found: dict[str | None, dict[str, float] | None] = {}  # a trace names few models

    def lookup(self, model: str | None) -> dict[str, float] | None:
        if model not in self._found:
            self._found[model] = next((prices for prefix, prices in self.table
                                       if model and model.startswith(prefix)), None)
        return self._found[model]

    def reported_cost(self, model: str | None, input_tokens: int, cached: int, written: int,
                      output_tokens: int, ttl_s: float | None) -> float | None:
        """The bill from reported usage: uncached input, cache writes at the TTL's price,
        cache reads, output. None for a model without prices."""
        p = self.lookup(model)
        if p is None:
            return None
        write = p["cache_write_3600"] if (ttl_s or 300) >= 3600 else p["cache_write_300"]
        uncached = input_tokens - cached - written
        return (uncached * p["input"] + written * write + cached * p["cache_read"]
                + output_tokens * p["output"]) / 1e6


class ProviderPromptCache:
    """``Node.stamp`` holds each run's expiry time."""

    def __init__(self, pricing: ApiPricing, block_size: int) -> None:
        self.pricing = pricing
        self.bs = block_size
        self.tree = RadixTree(1)

    def call(self, blocks: np.ndarray, now: float, input_tokens: int, output_tokens: int,
             ttl_s: float | None = None, prices: dict[str, float] | None = None) -> ApiCharge:
        """Bill one call sent at ``now``; ``prices`` (a ``ModelPrices`` entry) overrides the
        configured model's, for recorded calls made with another model."""
        p = self.pricing
        ttl = p.ttl_s if ttl_s is None else ttl_s
        cacheable = input_tokens >= p.min_tokens
        cached = 0
        if cacheable:
            path, matched, k = self.tree.match(blocks)
            live = matched
            for node in path:
                if node.stamp < now:  # expired: this run and everything below it is written again
                    live = node.end - len(node.hashes)
                    break
            cached = min(live * self.bs, input_tokens)
            cached -= cached % p.increment_tokens
            self._store(blocks, now, now + ttl, live, (path, matched, k))
        written = input_tokens - cached if (cacheable and p.write_billed) else 0
        uncached = input_tokens - cached - written
        if prices is None:
            rates = (p.input_per_mtok, p.cache_read_per_mtok, p.write_price(ttl), p.output_per_mtok)
        else:
            write = prices["cache_write_3600"] if ttl >= 3600 else prices["cache_write_300"]
            rates = (prices["input"], prices["cache_read"], write, prices["output"])
        cost = (uncached * rates[0] + cached * rates[1] + written * rates[2]
                + output_tokens * rates[3]) / 1e6
        return ApiCharge(cached, written, cost)

    def warm(self, blocks: np.ndarray, now: float, ttl_s: float | None = None) -> None:
        """Mark ``blocks`` cached as of ``now``, unbilled: what a recorded trace says the provider
        already held when the trace began (written by sessions before it)."""
        if len(blocks):
            self._store(blocks, now, now + (self.pricing.ttl_s if ttl_s is None else ttl_s), 0)

    def _store(self, blocks: np.ndarray, now: float, expiry: float, refreshed_blocks: int,
               matched_path: tuple[list[Node], int, int] | None = None) -> None:
        """Write ``blocks`` with ``expiry``, refreshing the first ``refreshed_blocks`` (hits);
        ``matched_path`` reuses a ``match`` the caller already made."""
        path, matched, k = matched_path or self.tree.match(blocks)
        path = self.tree.cut(path, k)
        for node in path:
            hit = node.end <= refreshed_blocks
            if (hit and self.pricing.refresh_on_hit) or not hit or node.stamp < now:
                node.stamp = max(node.stamp, expiry) if node.stamp >= now else expiry
        if matched < len(blocks):
            self.tree.add(path[-1] if path else self.tree.root, blocks[matched:], expiry)
