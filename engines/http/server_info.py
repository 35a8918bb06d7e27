"""What the engine asks a server before and after a replay: its model and vocabulary
(``/v1/models``), and its Prometheus prefix-cache counters (``/metrics``)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_counters(text: str, names: list[str]) -> dict[str, float]:
    """Sum of every sample of each named metric in a Prometheus text exposition."""
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in totals:
            try:
                totals[m.group(1)] += float(m.group(3))
            except ValueError:
                continue
    return totals


async def read_counters(session: aiohttp.ClientSession, url: str,
                        names: list[str]) -> dict[str, float] | None:
    """The counters now, or None if the server has no readable /metrics."""
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            return parse_counters(await resp.text(), names)
    except (aiohttp.ClientError, TimeoutError):
        return None


async def read_models(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """``/v1/models``'s first model: its id and, where the server says (llama.cpp), ``n_vocab``."""
    async with session.get(base_url + "/v1/models") as resp:
        resp.raise_for_status()
        data = (await resp.json()).get("data") or [{}]
    first = data[0]
    return {"id": first.get("id"), "n_vocab": (first.get("meta") or {}).get("n_vocab")}
