"""A provider's prompt cache and the bill it produces, for one model's entries.

Entries are prefixes of earlier prompts (a radix tree over the trace's blocks) with an expiry
time. A call *reads* at its send time the longest live prefix, rounded down to the provider's
increment and counted only if it reaches the model's minimum cacheable length; a hit refreshes
the entry (Anthropic: at no cost). It *writes* its prompt when its response starts (first
token): before that no other call can read it, so concurrent fan-out calls do not read each
other. A write lives ``ttl_s``. Prompts shorter than the minimum are neither read nor written.
With ``write_billed`` (Anthropic's explicit caching, breakpoint at the end of the prompt) every
uncached prompt token is written at the write price; otherwise (OpenAI, DeepSeek) uncached
tokens cost plain input. Every prefix of a cached prompt counts as readable, as if each call set
breakpoints along its whole prompt. ``replay.billing`` runs the calls through it in time order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import polars as pl

from engines.radix import RadixTree
from engines.specs import ConfigError

Tokens = TypeVar("Tokens", int, pl.Expr)


class Rules(NamedTuple):
    """One model's cache terms for one TTL: USD per million tokens, the minimum cacheable
    prompt and the increment cached reads come in."""

    input: float
    cache_read: float
    cache_write: float
    output: float
    min_tokens: int
    increment_tokens: int


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

    def rules(self, ttl_s: float) -> Rules:
        return Rules(self.input_per_mtok, self.cache_read_per_mtok, self.write_price(ttl_s),
                     self.output_per_mtok, self.min_tokens, self.increment_tokens)

    def no_reuse_cost(self, input_tokens: Tokens, output_tokens: Tokens) -> Tokens:
        """Every input token at the plain input price (ints, or polars columns of them)."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class ApiCharge(NamedTuple):
    cached_tokens: int
    written_tokens: int
    cost_usd: float


class ModelPrices:
    """Per-model list prices and cache minimums, for recorded calls made with a model other
    than the configured one and for billing reported usage; the longest model-name prefix wins."""

    def __init__(self, table: Mapping[str, Mapping[str, float]]) -> None:
        self.table = sorted(((k, dict(v)) for k, v in table.items()), key=lambda kv: -len(kv[0]))
        self._found: dict[str | None, dict[str, float] | None] = {}  # a trace names few models

    def lookup(self, model: str | None) -> dict[str, float] | None:
        if model not in self._found:
            self._found[model] = next((prices for prefix, prices in self.table
                                       if model and model.startswith(prefix)), None)
        return self._found[model]

    def rules(self, model: str | None, ttl_s: float, default: Rules) -> Rules:
        """``model``'s terms, or ``default`` (the configured model's) where it has no prices."""
        p = self.lookup(model)
        if p is None:
            return default
        write = p["cache_write_3600"] if ttl_s >= 3600 else p["cache_write_300"]
        return Rules(p["input"], p["cache_read"], write, p["output"],
                     int(p.get("min_tokens", default.min_tokens)),
                     int(p.get("increment_tokens", default.increment_tokens)))

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
    """The entries of one model. ``Node.stamp`` holds each run's expiry time."""

    def __init__(self, pricing: ApiPricing, block_size: int) -> None:
        self.pricing = pricing
        self.bs = block_size
        self.tree = RadixTree(1)

    def read(self, blocks: np.ndarray, now: float, input_tokens: int, ttl_s: float,
             rules: Rules) -> tuple[int, int]:
        """A call sent at ``now`` reads the live prefix: (cached tokens billed, live blocks).
        A hit refreshes what it read to ``now + ttl_s`` (with ``refresh_on_hit``)."""
        if input_tokens < rules.min_tokens:
            return 0, 0
        path, matched, k = self.tree.match(blocks)
        live = matched
        for node in path:
            if node.stamp < now:  # expired: this run and everything below it is written again
                live = node.end - len(node.hashes)
                break
        cached = min(live * self.bs, input_tokens)
        cached -= cached % rules.increment_tokens
        if cached < rules.min_tokens:  # the minimum applies to the cached prefix too
            cached = 0
        if live and self.pricing.refresh_on_hit:
            for node in self.tree.cut(path, k):
                if node.end > live:
                    break
                node.stamp = max(node.stamp, now + ttl_s)
        return cached, live

    def charge(self, cached: int, input_tokens: int, output_tokens: int, rules: Rules) -> ApiCharge:
        """The bill of a call that read ``cached`` tokens."""
        cacheable = input_tokens >= rules.min_tokens
        written = input_tokens - cached if (cacheable and self.pricing.write_billed) else 0
        uncached = input_tokens - cached - written
        cost = (uncached * rules.input + cached * rules.cache_read + written * rules.cache_write
                + output_tokens * rules.output) / 1e6
        return ApiCharge(cached, written, cost)

    def write(self, blocks: np.ndarray, now: float, ttl_s: float, refreshed_blocks: int = 0) -> None:
        """Store ``blocks`` (a response started at ``now``) to expire ``ttl_s`` later; the
        first ``refreshed_blocks`` were its read hits and keep their expiry unless hits refresh."""
        if len(blocks):
            self._store(blocks, now, now + ttl_s, refreshed_blocks)

    def call(self, blocks: np.ndarray, now: float, input_tokens: int, output_tokens: int,
             ttl_s: float | None = None, rules: Rules | None = None) -> ApiCharge:
        """Read and write at once: a call whose response starts the moment it is sent."""
        ttl = self.pricing.ttl_s if ttl_s is None else ttl_s
        rules = rules or self.pricing.rules(ttl)
        cached, live = self.read(blocks, now, input_tokens, ttl, rules)
        if input_tokens >= rules.min_tokens:
            self.write(blocks, now, ttl, live)
        return self.charge(cached, input_tokens, output_tokens, rules)

    def _store(self, blocks: np.ndarray, now: float, expiry: float, refreshed_blocks: int) -> None:
        path, matched, k = self.tree.match(blocks)
        path = self.tree.cut(path, k)
        for node in path:
            hit = node.end <= refreshed_blocks
            if (hit and self.pricing.refresh_on_hit) or not hit or node.stamp < now:
                node.stamp = max(node.stamp, expiry) if node.stamp >= now else expiry
        if matched < len(blocks):
            self.tree.add(path[-1] if path else self.tree.root, blocks[matched:], expiry)
