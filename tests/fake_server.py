"""A small in-process llama.cpp-style server (aiohttp.web, in its own thread) for what a real
server cannot be made to do on demand: a 500, a hang, a dropped stream, malformed SSE.

A call's fault is chosen by its session header (``X-Session-ID``): session ``fault-500``,
``fault-hang``, ``fault-drop`` or ``fault-badsse`` gets that fault; any other gets a normal reply
after ``ttft_s``, one token every ``tpot_s``. Every prompt received is kept in ``received``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FakeServer:
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    vocab: int = 1000
    received: list[tuple[str, list[int]]] = field(default_factory=list)  # (session, prompt ids)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake", "meta": {"n_vocab": self.vocab}}]})

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        session = request.headers.get("X-Session-ID", "")
        fault = session.removeprefix("fault-") if session.startswith("fault-") else None
        prompt = body["prompt"]
        with self._lock:
            self.received.append((session, list(prompt)))
        if fault == "500":
            return web.Response(status=500, text="boom")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if fault == "hang":
            await asyncio.sleep(3600)
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        n = int(body["n_predict"])
        for i in range(n):
            if i and self.tpot_s:
                await asyncio.sleep(self.tpot_s)
            if fault == "badsse" and i == 1:
                await resp.write(b"data: {not json\n\n")
                continue
            await resp.write(f"data: {json.dumps({'content': 'x', 'tokens': [7 + i], 'stop': False})}\n\n"
                             .encode())
            if fault == "drop" and i == 1:
                request.transport.close()
                return resp
        final = {"content": "", "stop": True,
                 "timings": {"cache_n": 0, "prompt_n": len(prompt), "predicted_n": n}}
        await resp.write(f"data: {json.dumps(final)}\n\n".encode())
        await resp.write_eof()
        return resp

    def __enter__(self) -> FakeServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.add_routes([web.get("/v1/models", self._models), web.post("/completion", self._completion)])
        self._runner = web.AppRunner(app, handler_cancellation=True)
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def main() -> None:
    """Serve until killed (benchmarks run it in its own process, off the client's GIL)."""
    import argparse
    import time

    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True, help="the chosen port is written here")
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--tpot", type=float, default=0.0)
    args = parser.parse_args()
    with FakeServer(ttft_s=args.ttft, tpot_s=args.tpot) as server:
        with open(args.port_file, "w") as f:
            f.write(str(server.port))
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
