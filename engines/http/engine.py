"""The http engine: the runner's calls, sent in real time to a real server.

The runner is a simulated-clock event loop; this engine maps its clock onto the monotonic clock
(replay time t is real time ``t0 + t``) and runs an asyncio loop in a background thread that
sends each call at its absolute time and streams the reply. ``submit`` only schedules the send
(the runner hands a call over up to ``send_ahead_s`` before it is due, so the runner's own work
never delays it); ``next_event_time`` blocks until a call has finished (its replay-clock finish
time) or until the runner's next send is due (the runner tells it through ``send_due``), and
returns None then so the runner sends. Closed mode needs nothing else: the runner schedules a
child at the parent's real finish plus think_s, on the same clock.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from engines.base import Completion, Request
from engines.http.client import Outcome, stream_call
from engines.http.dialects import DIALECTS
from engines.http.prompts import PromptBuilder
from engines.http.server_info import read_counters, read_models
from engines.specs import ConfigError

# Extra requests.parquet columns this engine fills (name, Arrow type alias).
EXTRA_COLUMNS = [
    ("send_lag_s", "float64"),            # actual - intended send time
    ("ttft_from_send_s", "float64"),      # first token - actual send (ttft_s is from the intended send)
    ("itl_max_s", "float64"),             # largest gap between streamed output chunks
    ("http_status", "int32"),
    ("error", "string"),
    ("server_prompt_tokens", "int64"),
    ("server_cached_tokens", "int64"),
    ("server_output_tokens", "int64"),
]
POLL_S = 0.25  # longest uninterrupted wait, so Ctrl-C is seen


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None]:
    """p50 and p99, or None for no values."""
    if not len(values):
        return None, None
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


@dataclass
class _Done:
    request: Request
    prompt: np.ndarray
    intended: float
    outcome: Outcome


class HttpEngine:
    """Replays calls against an OpenAI-compatible server; see conf/engine/http.yaml."""

    tier_names = ["server"]
    real_time = True  # the app runs no simulated no-reuse baseline for it
    extra_columns = EXTRA_COLUMNS

    def __init__(self, base_url: str, dialect: str = "openai", served_model: str | None = None,
                 vocab_size: int | None = None, token_id_low: int = 0, connections: int = 256,
                 connect_timeout_s: float = 10.0, request_timeout_s: float = 600.0,
                 read_timeout_s: float = 120.0, session_header: str | None = "X-Session-ID",
                 api_key_env: str | None = None, send_ahead_s: float = 0.02,
                 degraded_p99_send_lag_s: float = 0.005, start_at: float | None = None,
                 metrics_path: str = "/metrics", metrics_counters: list[str] | None = None,
                 gil_switch_interval_s: float | None = 0.0005,
                 trace_block_size: int = 64, **_simulator_keys: Any) -> None:
        if dialect not in DIALECTS:
            raise ConfigError(f"engine.dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        if connections < 1 or send_ahead_s < 0:
            raise ConfigError("engine.connections must be >= 1 and engine.send_ahead_s >= 0")
        self.base_url = base_url.rstrip("/")
        self.dialect = DIALECTS[dialect]
        self.send_ahead_s = float(send_ahead_s)
        self.degraded_p99 = float(degraded_p99_send_lag_s)
        self.start_at = start_at
        self.counter_names = list(metrics_counters or [])
        self.metrics_path = metrics_path
        self.headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"engine.api_key_env: environment variable {api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.session_header = session_header
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s,
                                              sock_read=read_timeout_s)
        self._connections = int(connections)
        # the runner thread and the sending loop share the GIL: Python's default 5 ms switch
        # interval would let the runner's work hold a due send back by up to 5 ms
        self._switch = sys.getswitchinterval()
        if gil_switch_interval_s:
            sys.setswitchinterval(gil_switch_interval_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-engine", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession = self._run(self._open())
        self._done: queue.Queue[_Done] = queue.Queue()
        self._ready: list[tuple[Completion, _Done]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Future] = set()
        self._t0: float | None = None
        self._next_send = math.inf
        self._lags: list[float] = []
        self._ttft_from_send: list[float] = []
        self._errors: Counter[str] = Counter()
        self._prompt_drift = 0
        self._no_ids = 0
        self._closed = False
        try:
            info = self._run(read_models(self._session, self.base_url)) \
                if served_model is None or vocab_size is None else {}
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.close()
            raise ConfigError(f"engine.base_url: cannot read {self.base_url}/v1/models ({exc}); set "
                              "engine.served_model and engine.vocab_size to skip asking") from None
        self.served_model = served_model or info.get("id") or ""
        vocab = vocab_size or info.get("n_vocab")
        if not vocab:
            self.close()
            raise ConfigError(f"engine.vocab_size: the server at {self.base_url} does not say its vocabulary "
                              "size; set it (the model's config.json vocab_size)")
        if not 0 <= int(token_id_low) < int(vocab):
            self.close()
            raise ConfigError(f"engine.token_id_low must be in [0, vocab_size = {vocab}), got {token_id_low}")
        self.prompts = PromptBuilder(int(trace_block_size), int(vocab), int(token_id_low))
        self._counters_before = self._counters()

    # -- the loop thread --------------------------------------------------------------------
    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=self._timeout, read_bufsize=1 << 22,
            connector=aiohttp.TCPConnector(limit=self._connections, force_close=False))

    def _counters(self) -> dict[str, float] | None:
        if not self.counter_names:
            return None
        return self._run(read_counters(self._session, self.base_url + self.metrics_path, self.counter_names))

    async def _call(self, request: Request, prompt: np.ndarray, intended: float) -> None:
        delay = intended - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        headers = dict(self.headers)
        if self.session_header:
            headers[self.session_header] = request.session_id
        body = self.dialect.body(self.served_model, prompt.tolist(), request.output_tokens)
        out = await stream_call(self._session, self.base_url + self.dialect.path, self.dialect, body, headers)
        self._done.put(_Done(request, prompt, intended, out))

    # -- the engine protocol ----------------------------------------------------------------
    def _clock(self, t: float) -> None:
        """Fix replay time 0 on the monotonic clock: ``start_at`` (epoch seconds, shared by every
        shard) or else so that the first send is now."""
        if self._t0 is None:
            self._t0 = (time.monotonic() + self.start_at - time.time()) if self.start_at is not None \
                else time.monotonic() - t

    def send_due(self, t: float) -> None:
        """The runner's next send time (math.inf: none): ``next_event_time`` returns by then."""
        if t != math.inf:
            self._clock(t)
        self._next_send = t

    def submit(self, request: Request, now: float) -> None:
        self._clock(now)
        prompt = self.prompts.prompt(request.request_id, request.blocks, request.input_tokens)
        self.prompts.expect(request.output_blocks)
        fut = asyncio.run_coroutine_threadsafe(self._call(request, prompt, self._t0 + now), self._loop)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)
        self._in_flight += 1

    def next_event_time(self) -> float | None:
        """The earliest finish received. With none yet it waits for one, until the runner's next
        send is due (then None: nothing before it) and at most POLL_S: then it returns the time
        now, so the runner takes a turn of its loop (where it sees a Ctrl-C) and asks again."""
        self._drain(block=False)
        if not self._ready:
            if self._in_flight == 0:
                return None
            due = math.inf if self._next_send == math.inf else \
                self._t0 + self._next_send - self.send_ahead_s - time.monotonic()
            if due <= 0:
                return None
            self._drain(block=True, timeout=min(due, POLL_S))
            if not self._ready:
                return time.monotonic() - self._t0
        return min(c.finish_s for c, _ in self._ready)

    def advance(self, until: float) -> list[Completion]:
        due = [x for x in self._ready if x[0].finish_s <= until]
        self._ready = [x for x in self._ready if x[0].finish_s > until]
        for _, done in due:
            self._learn(done)
        out = [c for c, _ in due]
        self._in_flight -= len(out)
        return out

    def _drain(self, block: bool, timeout: float = 0.0) -> None:
        try:
            item = self._done.get(timeout=timeout) if block else self._done.get_nowait()
        except queue.Empty:
            return
        while True:
            self._ready.append((self._completion(item), item))
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return

    def _learn(self, done: _Done) -> None:
        """Keep the parent's real output tokens for the children that keep its decode blocks."""
        reply = done.outcome.reply
        if reply.ids_returned and done.outcome.error is None:
            self.prompts.learn(done.prompt, reply.output_ids, done.request.output_blocks)
        elif len(done.request.output_blocks):
            self._no_ids += 1

    def _completion(self, done: _Done) -> Completion:
        out, reply, req = done.outcome, done.outcome.reply, done.request
        t0 = self._t0
        lag = out.sent - done.intended
        self._lags.append(lag)
        if out.error is not None:
            self._errors[out.error.split(":")[0]] += 1
        if reply.prompt_tokens is not None and reply.prompt_tokens != req.input_tokens:
            self._prompt_drift += 1
        cached = reply.cached_tokens
        computed = (reply.prompt_tokens or req.input_tokens) - (cached or 0) if out.error is None else 0
        first = out.first_token - t0 if out.first_token is not None else math.nan
        if out.first_token is not None:
            self._ttft_from_send.append(out.first_token - out.sent)
        return Completion(
            request_id=req.request_id, instance=0, start_s=out.sent - t0, first_token_s=first,
            finish_s=out.finished - t0, reused_tokens_by_tier={"server": cached or 0},
            prefilled_tokens=computed, loaded_bytes=0.0, gpu_s=0.0,
            extra={
                "send_lag_s": lag,
                "ttft_from_send_s": first - (out.sent - t0),
                "itl_max_s": out.max_gap_s,
                "http_status": out.status,
                "error": out.error,
                "server_prompt_tokens": reply.prompt_tokens,
                "server_cached_tokens": cached,
                "server_output_tokens": reply.completion_tokens if reply.completion_tokens is not None
                else (len(reply.output_ids) or None),
            })

    def stats(self) -> dict[str, Any]:
        """Send accuracy, errors, and the server's own prefix-cache counters over the run."""
        after = self._counters() if not self._closed else None
        self.close()
        lags = np.asarray(self._lags)
        p50, p99 = _percentiles(lags)
        metrics = None
        if self._counters_before is not None and after is not None:
            metrics = {k: after[k] - self._counters_before[k] for k in after}
        return {"http": {
            "dialect": self.dialect.name,
            "send_lag_p50_s": p50,
            "send_lag_p99_s": p99,
            "send_lag_max_s": float(lags.max()) if len(lags) else None,
            # TTFT from the actual send (the summary's ttft_s is from the intended one)
            "ttft_from_send_p50_s": _percentiles(np.asarray(self._ttft_from_send))[0],
            "ttft_from_send_p99_s": _percentiles(np.asarray(self._ttft_from_send))[1],
            "degraded": p99 is not None and p99 > self.degraded_p99,
            "errors": dict(self._errors),
            "prompt_token_drift_calls": self._prompt_drift,
            "output_ids_missing_calls": self._no_ids,
            "synthetic_output_blocks": self.prompts.synthetic_blocks,
            "server_metrics_delta": metrics,
        }}

    def close(self) -> None:
        """Cancel what is still in flight and stop the loop thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for fut in list(self._tasks):
            fut.cancel()
        session = getattr(self, "_session", None)
        if session is not None:
            asyncio.run_coroutine_threadsafe(session.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        sys.setswitchinterval(self._switch)
