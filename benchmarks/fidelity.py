"""How close the timing model comes to published serving measurements.

Each row of the CSV (format: benchmarks/published.md) is set up on the offload engine (iteration-
level continuous batching, the one that models batching and KV admission) with the row's model,
GPU, tp and precisions and the shipped conf/hardware, and driven through the engine protocol
with requests that share nothing (unique random block hashes): ``concurrency=C`` as a closed
loop (the next request when one finishes, no think time), ``offline`` with every request queued
at t=0, ``rate=R`` with Poisson arrivals. Prints id, condition, published, predicted, ratio, then
the median absolute error, the worst row, and a last-line JSON.

Serving-stack settings the sources state are applied per row (they are conditions, not fits):
TensorRT-LLM and NIM rows admit with ``reserve`` (GUARANTEED_NO_EVICT); trtllm-bench rows use the
max batch size and max tokens per step that trtllm-bench derives from the dataset (its
``calc_engine_setting`` / ``finetune_setting`` heuristic, reproduced below).

Usage: python -m benchmarks.fidelity [--rows FILE.csv] [--max-requests N] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from benchmarks.common import yardstick_s
from engines.base import Completion, Request
from engines.offload import OffloadEngine
from engines.specs import DTYPE_BYTES, ConfigError, ModelSpec
from traces.hashing import chain_hashes, output_blocks_after

HERE = Path(__file__).parent
METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "output_tokens_per_s")
BLOCK = 32  # tokens per KV block (TensorRT-LLM's tokens_per_block default)


class Unsupported(Exception):
    """A row this project cannot set up; the message says why."""


@dataclass(frozen=True)
class Row:
    id: str
    source: str
    model: str
    gpu: str
    tp: int
    weight_dtype: str
    kv_dtype: str
    input_tokens: int
    output_tokens: int
    load: str
    requests: int
    metric: str
    statistic: str
    published: float
    conditions: str

    @classmethod
    def from_csv(cls, rec: Mapping[str, str]) -> Row:
        def dtype(text: str) -> str:
            return (text or "bf16").split()[0].strip().lower()

        try:
            return cls(rec["id"], rec["source"], rec["model"], rec["gpu"], int(rec["tp"]),
                       dtype(rec["weight_dtype"]), dtype(rec["kv_dtype"]), int(rec["input_tokens"]),
                       int(rec["output_tokens"]), rec["load"].strip(), int(rec["requests"]),
                       rec["metric"].strip(), rec["statistic"].strip(), float(rec["published"]),
                       rec.get("conditions", ""))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"row {rec.get('id', '?')}: bad or missing column ({exc})") from None

    @property
    def condition(self) -> str:
        return (f"{self.model} {self.gpu} tp{self.tp} {self.weight_dtype}/{self.kv_dtype} "
                f"{self.input_tokens}/{self.output_tokens} {self.load}")

    @property
    def trtllm(self) -> bool:
        return "TensorRT-LLM" in self.source or "NIM" in self.source or "TensorRT-LLM" in self.conditions


def conf(group: str, name: str) -> dict[str, Any]:
    path = resources.files("conf").joinpath(group, f"{name}.yaml")
    if not path.is_file():
        raise Unsupported(f"no conf/{group}/{name}.yaml")
    return OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)


def trtllm_bench_settings(model: ModelSpec, hbm_bytes: float, tp: int, isl: int, osl: int) -> tuple[int, int]:
    """(max batch size, max tokens per step) as trtllm-bench picks them for a dataset of
    ``isl``/``osl`` (TensorRT-LLM tensorrt_llm/bench/build/tuning.py: KV memory = 0.95 x (GPU
    memory - engine size), requests that fit it, then rounded up and capped at 4,096 and 32,768)."""
    gib = 1024**3
    kv_per_token = 2 * model.layers * max(tp, model.kv_heads) * model.head_dim * model.kv_dtype_bytes / gib
    if model.attention == "mla":
        kv_per_token = model.kv_bytes_per_token / gib
    available = hbm_bytes / gib * tp - model.params / 1e9 * model.weight_dtype_bytes
    max_requests = max(available * 0.95 / kv_per_token / (isl + osl), 1.0)
    raw_bs = min(max_requests, 4096)
    raw_tokens = min(raw_bs * (1 + isl / osl), 32768)
    bs = _round_up(raw_bs, ((256, 32), (1024, 128), (math.inf, 256)), floor=64)
    tokens = _round_up(raw_tokens, ((4096, 256), (8192, 512), (math.inf, 1024)), floor=2048)
    return bs, tokens


def _round_up(value: float, ladder: tuple[tuple[float, int], ...], floor: int) -> int:
    """trtllm-bench's rounding: up to a multiple of the step of the first rung ``value`` is
    below, and at least ``floor`` (the floor applies on the first rung only, as there)."""
    for i, (below, step) in enumerate(ladder):
        if value < below:
            rounded = step * math.ceil(value / step)
            return max(floor, rounded) if i == 0 else rounded
    raise ValueError(value)


def build(row: Row, hardware_changes: Mapping[str, Any] | None = None) -> tuple[OffloadEngine, str]:
    """The engine for a row, and a note on the serving settings it was given."""
    for dtype in (row.weight_dtype, row.kv_dtype):
        if dtype not in DTYPE_BYTES:
            raise Unsupported(f"precision {dtype!r} is not modelled")
    model = conf("model", row.model) | {"weight_dtype": row.weight_dtype, "kv_dtype": row.kv_dtype,
                                          "weight_dtype_bytes": None, "kv_dtype_bytes": None}
    hardware = conf("hardware", row.gpu)
    for key, value in (hardware_changes or {}).items():  # "efficiency.flops": 0.5, for fitting
        *path, last = key.split(".")
        target = hardware
        for part in path:
            target = target[part]
        target[last] = value
    cache = conf("cache", "hbm_only")
    kwargs: dict[str, Any] = {}
    note = "greedy admission, engine defaults"
    if row.trtllm:
        kwargs["admission"] = "reserve"
        note = "reserve admission"
        if "trtllm-bench" in row.conditions:
            bs, tokens = trtllm_bench_settings(ModelSpec.from_cfg(model), float(hardware["hbm_bytes"]),
                                               row.tp, row.input_tokens, row.output_tokens)
            kwargs.update(max_running=bs, max_batched_tokens=tokens)
            note += f", trtllm-bench max_batch_size {bs} max_num_tokens {tokens}"
    try:
        engine = OffloadEngine(model, hardware, cache, row.tp, 1, BLOCK, **kwargs)
    except ConfigError as exc:
        raise Unsupported(str(exc)) from None
    return engine, note


def make_request(i: int, row: Row, rng: np.random.Generator, at: float) -> Request:
    """A request sharing nothing with any other: random content keys for its blocks."""
    rid = f"{row.id}-{i}"
    keys = rng.integers(1, 2**63, size=row.input_tokens // BLOCK, dtype=np.uint64)
    blocks = chain_hashes(None, keys) if len(keys) else np.zeros(0, dtype=np.uint64)
    return Request(rid, rid, 0, "fidelity", at, row.input_tokens, row.output_tokens, blocks, BLOCK,
                   output_blocks_after(blocks, rid, row.input_tokens, row.output_tokens, BLOCK))


def drive(engine: OffloadEngine, row: Row, n: int,
          rng: np.random.Generator) -> list[tuple[float, Completion]]:
    """Run ``n`` requests under the row's load; (send time, completion) in completion order."""
    kind, _, value = row.load.partition("=")
    sent: dict[str, float] = {}
    arrivals: list[float] = []
    if kind == "offline":
        arrivals = [0.0] * n
    elif kind == "rate":
        rate = float(value)
        arrivals = list(np.cumsum(rng.exponential(1.0 / rate, size=n)))
    elif kind == "concurrency":
        # clients start spread over one request's expected duration, so the loop runs in its
        # steady state from the start instead of in lockstep waves (real clients drift apart)
        c = min(int(value), n)
        roof = engine.roofline
        span = roof.prefill_s(row.input_tokens) + (row.output_tokens - 1) * roof.decode_step_s(
            c, row.input_tokens + row.output_tokens / 2)
        arrivals = [span * i / c for i in range(c)]
    else:
        raise Unsupported(f"load {row.load!r} is not offline, rate=R or concurrency=C")
    heapq.heapify(arrivals)
    closed = kind == "concurrency"
    done: list[tuple[float, Completion]] = []
    count = 0
    while len(done) < n:
        t_event = engine.next_event_time()
        if arrivals and (t_event is None or arrivals[0] <= t_event):
            at = heapq.heappop(arrivals)
            req = make_request(count, row, rng, at)
            sent[req.request_id] = at
            engine.submit(req, at)
            count += 1
            continue
        if t_event is None:
            raise Unsupported("the engine stalled")
        for c in engine.advance(t_event):
            done.append((sent[c.request_id], c))
            if closed and count < n:
                heapq.heappush(arrivals, t_event)
    return done


def measure(row: Row, done: list[tuple[float, Completion]], skip: int) -> float:
    """The row's metric over the completions (the first ``skip``, a closed loop's first wave,
    left out: the source reports steady state)."""
    runs = done[skip:] if len(done) > skip else done
    if row.metric == "ttft_ms":
        values = [(c.first_token_s - at) * 1e3 for at, c in runs]
    elif row.metric in ("itl_ms", "tpot_ms"):
        if row.output_tokens < 2:
            raise Unsupported("inter-token latency needs at least two output tokens")
        values = [(c.finish_s - c.first_token_s) * 1e3 / (row.output_tokens - 1) for _, c in runs]
    elif row.metric == "output_tokens_per_s":
        span = max(c.finish_s for _, c in done) - min(at for at, _ in done)
        return len(done) * row.output_tokens / span
    else:
        raise Unsupported(f"metric {row.metric!r} is not one of {', '.join(METRICS)}")
    return statistics.median(values) if row.statistic == "median" else statistics.fmean(values)


def predict(row: Row, max_requests: int, seed: int,
            hardware_changes: Mapping[str, Any] | None = None) -> tuple[float, str]:
    engine, note = build(row, hardware_changes)
    n = min(row.requests, max_requests)
    if n < row.requests:
        note += f"; {n} of {row.requests} requests"
    done = drive(engine, row, n, np.random.default_rng(seed))
    kind, _, value = row.load.partition("=")
    skip = min(int(value), n // 2) if kind == "concurrency" and n > int(value) else 0
    if skip:
        note += f"; first {skip} (first wave) left out"
    return measure(row, done, skip), note


def read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=Path, default=HERE / "published.csv")
    parser.add_argument("--max-requests", type=int, default=30000,
                        help="run at most this many requests per row (steady state is reached well before)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        records = read_rows(args.rows)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    by_id = {rec.get("id"): rec for rec in records}
    for rec in records:  # "as T1 ...": the conditions of the row named
        words = (rec.get("conditions") or "").split()
        if len(words) >= 2 and words[0] == "as" and words[1] in by_id and words[1] != rec.get("id"):
            rec["conditions"] = by_id[words[1]].get("conditions", "") + " " + rec["conditions"]
    errors: list[tuple[float, str]] = []
    print(f"{'id':<5} {'condition':<58} {'metric':<20} {'published':>10} {'predicted':>10} {'ratio':>6}")
    for rec in records:
        try:
            row = Row.from_csv(rec)
            predicted, note = predict(row, args.max_requests, args.seed)
        except (Unsupported, ConfigError) as exc:
            print(f"{rec.get('id', '?'):<5} cannot be set up: {exc}")
            continue
        ratio = predicted / row.published
        errors.append((abs(ratio - 1), row.id))
        print(f"{row.id:<5} {row.condition:<58} {row.metric:<20} {row.published:>10.2f} {predicted:>10.2f} "
              f"{ratio:>6.2f}   ({note})")
    summary: dict[str, Any] = {"median_abs_error": None, "max_abs_error": None, "rows": len(errors)}
    if errors:
        worst = max(errors)
        summary["median_abs_error"] = round(statistics.median(e for e, _ in errors), 4)
        summary["max_abs_error"] = round(worst[0], 4)
        print(f"median abs error {summary['median_abs_error']:.1%}; worst row {worst[1]} "
              f"({worst[0]:.1%}); {len(errors)} of {len(records)} rows set up")
    summary["yardstick_s"] = yardstick_s()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
