"""A real llama.cpp ``llama-server`` for the http-engine tests, started and stopped by PID.

The binary and the model come from .ci/llama_server.sh's cache (``$AGENT_REPLAY_CACHE``, default
~/.cache/agent-replay: llama-server-<version>/llama-server and smollm2-<version>/model.gguf) or
from ``AGENT_REPLAY_LLAMA_SERVER`` / ``AGENT_REPLAY_MODEL``. Absent, the tests skip with the
command that prepares them, unless ``AGENT_REPLAY_REQUIRE_SERVER=1`` (CI), which fails instead.

One slot (``-np 1``) and no host-memory prompt cache (``--cache-ram 0``): llama.cpp keeps the KV
of one sequence per slot (and, with the RAM cache, saves a slot's prompt there when a call too
unlike it takes the slot), so with one slot and no RAM cache every call is compared with the
call the server ran just before it, which a test can work out.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CTX = 2048  # tokens of context for the one slot: the test trace's longest call fits
THREADS = 2


def _find(env: str, pattern: str) -> Path | None:
    if os.environ.get(env):
        path = Path(os.environ[env])
        return path if path.exists() else None
    cache = Path(os.environ.get("AGENT_REPLAY_CACHE", Path.home() / ".cache" / "agent-replay"))
    found = sorted(cache.glob(pattern))
    return found[-1] if found else None


def server_and_model() -> tuple[Path, Path]:
    """The prepared binary and model, or skip (fail under AGENT_REPLAY_REQUIRE_SERVER=1)."""
    exe = _find("AGENT_REPLAY_LLAMA_SERVER", "llama-server-*/llama-server")
    model = _find("AGENT_REPLAY_MODEL", "smollm2-*/model.gguf")
    if exe is None or model is None:
        reason = ("llama-server or the SmolLM2 model is not prepared: run .ci/llama_server.sh "
                  "(or set AGENT_REPLAY_LLAMA_SERVER and AGENT_REPLAY_MODEL)")
        if os.environ.get("AGENT_REPLAY_REQUIRE_SERVER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe, model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def start(log: Path, extra: list[str] = ()) -> Iterator[str]:
    """Run llama-server on a free loopback port until the generator is closed; yields its URL."""
    exe, model = server_and_model()
    port = _free_port()
    cmd = [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", "1",
           "-c", str(CTX), "-t", str(THREADS), "--cache-ram", "0", "--no-webui", *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
