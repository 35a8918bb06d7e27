"""One streamed call over HTTP (aiohttp): send, read server-sent events, time every token.

aiohttp because it is one well-kept package for both the client and the small fake server the
tests need, its streaming reader is plain ``async for line in resp.content``, and its connection
pool takes a hard limit. Every failure (HTTP status, timeout, dropped stream, malformed event) is
returned as text on the outcome, never raised: one bad call must not stop a replay.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engines.http.dialects import Dialect, Reply

ERROR_CHARS = 300  # error text kept per call


@dataclass
class Outcome:
    """Monotonic times (seconds) and what the server said about one call."""

    sent: float
    first_token: float | None = None
    last_token: float | None = None
    finished: float = 0.0
    status: int | None = None
    error: str | None = None
    max_gap_s: float | None = None  # largest gap between streamed output chunks
    reply: Reply = field(default_factory=Reply)


def _events(line: bytes) -> str | None:
    """The payload of one SSE ``data:`` line (None for blank lines, comments, other fields)."""
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("data:"):
        return None
    return text[5:].strip()


async def stream_call(session: aiohttp.ClientSession, url: str, dialect: Dialect, body: dict[str, Any],
                      headers: dict[str, str]) -> Outcome:
    """POST ``body`` and read the stream to its end."""
    out = Outcome(sent=time.monotonic())
    reply = out.reply
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            out.status = resp.status
            if resp.status != 200:
                text = await resp.text()
                out.error = f"HTTP {resp.status}: {text.strip()[:ERROR_CHARS]}"
                return out
            async for line in resp.content:
                payload = _events(line)
                if payload is None or payload == "":
                    continue
                if payload == "[DONE]":
                    reply.done = True
                    break
                try:
                    event = json.loads(payload)
                except json.JSONDecodeError:
                    out.error = f"malformed event: {payload[:ERROR_CHARS]}"
                    return out
                if not isinstance(event, dict):
                    out.error = f"malformed event: {payload[:ERROR_CHARS]}"
                    return out
                if "error" in event:
                    out.error = f"server error: {json.dumps(event['error'])[:ERROR_CHARS]}"
                    return out
                before = reply.chunks
                dialect.read(event, reply)
                if reply.chunks > before:
                    now = time.monotonic()
                    if out.first_token is None:
                        out.first_token = now
                    elif out.last_token is not None:
                        gap = now - out.last_token
                        out.max_gap_s = gap if out.max_gap_s is None else max(out.max_gap_s, gap)
                    out.last_token = now
            if not reply.done:
                out.error = "stream ended before the reply was complete"
    except asyncio.TimeoutError:
        out.error = "timeout"
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: an event line over read_bufsize
        out.error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    finally:
        out.finished = time.monotonic()
    return out
