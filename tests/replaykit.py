"""Compose the replay config as the app does, for tests that call replay.app.run directly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import DictConfig


def run_cli(name: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """One of the package's commands (``replay``, ``replay-merge``, ...) from this venv, as a user
    runs it: its own process, one-line errors (no Hydra traceback)."""
    return subprocess.run([str(Path(sys.executable).parent / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def start_cli(name: str, *args: str, cwd: Path) -> subprocess.Popen:
    """``run_cli`` without waiting, in a process group of its own (a terminal's Ctrl-C goes to
    the whole foreground group: ``os.killpg``), its output piped as text."""
    return subprocess.Popen([str(Path(sys.executable).parent / name), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
                            start_new_session=True)


def wait_for(found: Callable[[], Any], proc: subprocess.Popen, deadline: float, poll_s: float = 0.02) -> Any:
    """The first true answer of ``found()``, asked while ``proc`` runs; fails (with its output)
    if it ends first or ``deadline`` (time.monotonic) passes."""
    while not (value := found()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(poll_s)
    return value


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_module(version_base=None, config_module="conf"):
        return compose(config_name="config", overrides=["replay.progress=false", *overrides])


# A model and machine with round numbers, so a test can work times out by hand: 5e8 active
# parameters (1 byte each), one layer of width 1, KV 4 bytes per token; 1 TFLOP/s and 1 TB/s at
# full efficiency; one GPU, one slot.
SIMPLE = [
    "model=tiny", "model.layers=1", "model.hidden=1", "model.heads=1", "model.kv_heads=1",
    "model.head_dim=1", "model.params=5e8", "model.active_params=5e8", "model.kv_dtype_bytes=2",
    "model.weight_dtype_bytes=1",
    "hardware=cpu", "hardware.flops=1e12", "hardware.hbm_bw=1e12", "hardware.hbm_bytes=1e12",
    "hardware.efficiency.flops=1.0", "hardware.efficiency.hbm=1.0", "hardware.efficiency.link=1.0",
    "hardware.power_w=0",
    "parallel.tp=1", "cache=hbm_only", "engine.concurrency=1",
    "pricing=anthropic_haiku_4_5", "pricing.api.min_tokens=1",
]


SIMPLE_FLOPS = 1e12
SIMPLE_HEAD = 256  # lm_head (vocab 256 x width 1): computed only at sampled positions; the
# embedding (as many weights) is a lookup. The other 5e8 - 2 x 256 weights see every token.


def simple_prefill_s(n: float, c: float = 0) -> float:
    """SIMPLE's prefill of n tokens after c cached (compute-bound): 2 x (5e8 - 512) x n dense
    FLOPs, 2 x 256 for the one sampled position's logits, 4 x (n c + n^2 / 2) attention."""
    return (2 * (5e8 - 2 * SIMPLE_HEAD) * n + 2 * SIMPLE_HEAD + 4 * (n * c + n * n / 2)) / SIMPLE_FLOPS


def simple_decode_step_s(context: float) -> float:
    """One batch-1 decode step of SIMPLE at ``context`` (compute-bound): one token through the
    dense weights and the lm_head, 4 x context attention."""
    return (2 * (5e8 - 2 * SIMPLE_HEAD) + 2 * SIMPLE_HEAD + 4 * context) / SIMPLE_FLOPS


def run_two_lone_calls(tmp_path: Path, overrides: list[str], engine: str = "analytic") -> dict[str, Any]:
    """Two one-call sessions, 12-token prompts sharing nothing and 2 output tokens, sent at 0 and
    2 s (open mode) to 2 SIMPLE instances of ``engine`` (analytic or offload): each takes one
    prefill and one decode step, nobody queues. Returns the run's summary."""
    from tracekit import row, write

    from replay.app import run

    path = write(tmp_path / "t.parquet", [
        row("x", 0, 12, [1, 2, 3], output_tokens=2, arrival_s=0.0),
        row("y", 0, 12, [4, 5, 6], output_tokens=2, arrival_s=2.0),
    ])
    out = tmp_path / "run"
    out.mkdir()
    simple = SIMPLE if engine == "analytic" else [o for o in SIMPLE if not o.startswith("engine.")]
    return run(compose_cfg([*simple, f"engine={engine}", "instances=2", "replay.mode=open", "trace=file",
                            f"trace.path={path}", *overrides]), out)
