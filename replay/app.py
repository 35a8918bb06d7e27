"""The `replay` command: a Hydra app that replays a trace against an engine and prices it.

    replay                                   # default experiment on a small generated trace
    replay model=llama3_1_8b hardware=h200 cache=hbm_dram_nvme
    replay trace=file trace.path=my.parquet replay.mode=open
    replay -m cache=hbm_only,hbm_dram_nvme   # a sweep; writes one comparison table
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engines.specs import ConfigError
from replay.sweep import FAILED
from traces.errors import TraceError

if TYPE_CHECKING:  # the modules below load polars, pyarrow and the engines: `replay --help` needs none
    from replay.bill_process import BillProcess
    from replay.billing import Biller, BillStream
    from replay.cost import SelfHostedPricing
    from replay.interrupt import CtrlC
    from replay.runner import ReplayOptions, ReplayResult

BASELINES = ("simulate", "off")


def resolve_trace(cfg: DictConfig, run_dir: Path) -> str:
    """The trace file to replay: generated into the run folder, or the user's file, whose rows
    are checked first (one line naming the first bad row, never a traceback mid-replay)."""
    from traces.validate import check_rows

    kind = cfg.trace.get("kind")
    if kind == "generate":
        from traces.synth import generate

        path = run_dir / "trace.parquet"
        generate(cfg.trace, path)
        return str(path)
    if kind == "file":
        path = cfg.trace.get("path")
        if path in (None, "???"):
            raise ConfigError("trace=file needs trace.path=/path/to/trace.parquet")
        check_rows(path, "not replayed")
        return str(path)
    raise ConfigError(f"trace.kind must be 'generate' or 'file', got {kind!r}")


def build_engine(cfg: DictConfig, trace_block_size: int, **overrides: Any):
    """The configured engine; ``overrides`` replace engine keys (``prefix_reuse=False``)."""
    container = lambda key: OmegaConf.to_container(cfg[key], resolve=True)  # noqa: E731
    from replay.pools import mode

    if mode(cfg) == "pd":
        return build_disaggregated(cfg, trace_block_size, **overrides)
    try:
        return hydra.utils.instantiate(
            cfg.engine, model=container("model"), hardware=container("hardware"),
            cache=container("cache"), tp=cfg.parallel.tp, instances=cfg.instances,
            trace_block_size=trace_block_size, _convert_="all", **overrides)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, (ConfigError, TraceError)):
            raise cause from None
        raise ConfigError(f"engine {cfg.engine.get('_target_')}: {cause}") from None


def build_disaggregated(cfg: DictConfig, trace_block_size: int, **overrides: Any):
    """deployment=pd: a prefill pool and a decode pool of the offload engine (engines/offload/pd.py)."""
    from engines.offload.pd import DisaggregatedEngine
    from replay.pools import pools

    if not str(cfg.engine.get("_target_", "")).endswith("offload.OffloadEngine"):
        raise ConfigError("deployment=pd needs engine=offload")
    prefill, decode = pools(cfg)
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    engine.pop("_target_")
    pool = lambda p: {"hardware": p.hardware, "cache": p.cache, "tp": p.tp, "count": p.count}  # noqa: E731
    return DisaggregatedEngine(OmegaConf.to_container(cfg.model, resolve=True), pool(prefill), pool(decode),
                               OmegaConf.to_container(cfg.deployment.link, resolve=True), trace_block_size,
                               **{**engine, **overrides})


def check_prefix_reuse(cfg: DictConfig) -> None:
    """Fail before the replay, not after it, if the engine cannot run the no-reuse baseline."""
    target = str(cfg.engine._target_)
    if "prefix_reuse" not in inspect.signature(hydra.utils.get_class(target)).parameters:
        raise ConfigError(f"engine {target} has no prefix_reuse option for the no-reuse baseline: "
                          "set replay.baseline=off")


def simulate(path: str, engine, opts: ReplayOptions, out: Path,
             bill: BillStream | None = None, ctrl_c: CtrlC | None = None) -> ReplayResult:
    """Replay ``path`` through ``engine``, streaming the engine's rows to ``out`` as calls finish
    (and, with ``bill``, the calls as sent and finished to the API bill); ``ctrl_c``: the run's
    Ctrl-C handler (``replay.runner.replay``)."""
    from replay.metrics import RequestsWriter
    from replay.runner import replay

    writer = RequestsWriter(out, engine.tier_names, tuple(getattr(engine, "extra_columns", ())))

    def finished(call: dict[str, Any], request: Any, done: Any) -> None:
        writer.add(request, done)
        if bill is not None:
            bill.on_finish(call, request, done)

    try:
        return replay(path, engine, opts, bill.on_send if bill is not None else None, finished, ctrl_c)
    finally:
        writer.close()
        if hasattr(engine, "close"):  # an engine holding connections and a thread (engine=http)
            engine.close()


def open_bill(cfg: DictConfig, biller: Biller, path: str, opts: ReplayOptions) -> BillStream | BillProcess:
    """The API bill's stream: in this process, or in a second one (on another core) for a trace
    of at least ``replay.bill_process_min_calls`` rows (null: never)."""
    from traces.io import row_count

    threshold = cfg.replay.get("bill_process_min_calls")
    if threshold is not None and (type(threshold) is not int or threshold < 0):
        raise ConfigError(f"replay.bill_process_min_calls must be null or an integer >= 0, got {threshold!r}")
    if threshold is not None and row_count(path) >= threshold:
        from replay.bill_process import BillProcess

        return BillProcess(biller, path, opts)
    return biller.stream()


def storage_usd(pricing: SelfHostedPricing, result: ReplayResult) -> dict[str, float]:
    return {name: pricing.storage_cost(name, byte_s)
            for name, byte_s in result.engine_stats.get("byte_seconds_by_tier", {}).items()}


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """One replay: trace -> runner -> engine -> metrics and the API bill (fed the runner's calls
    as sent and finished), then the no-reuse baseline (a second simulation), cost, summary.

    Ctrl-C keeps what ran. One handler covers the replay and everything up to the summary
    being written: a first press stops the replay at its next turn (the finished calls are
    kept), skips or stops the baseline, skips the plots, and the run is written, marked
    interrupted; a second press stops at once. Once the summary is written a press stops the
    plots (the files are complete)."""
    from replay.interrupt import CtrlC

    ctrl_c = CtrlC()  # started by _run when the replay is set up
    try:
        return _run(cfg, run_dir, ctrl_c)
    finally:
        ctrl_c.stop()


def _run(cfg: DictConfig, run_dir: Path, ctrl_c: CtrlC) -> dict[str, Any]:
    import dataclasses

    import numpy as np
    import polars as pl

    from replay.api_cache import ApiPricing, ModelPrices
    from replay.atomic import write_atomic
    from replay.billing import Biller
    from replay.cost import SelfHostedPricing
    from replay.goodput import Slo
    from replay.load import LoadOptions, load_figures
    from replay.metrics import assemble, baseline_frame
    from replay.pools import blended, describe, pool_figures
    from replay.pools import mode as deployment_mode
    from replay.pools import pools as deployment_pools
    from replay.runner import ReplayOptions
    from replay.summary import summarize, write_summary
    from traces.io import read_meta

    load = LoadOptions.from_cfg(cfg.get("load"))
    path = resolve_trace(cfg, run_dir)
    meta = read_meta(path)
    baseline = str(cfg.replay.get("baseline", "simulate"))
    if baseline not in BASELINES:
        raise ConfigError(f"replay.baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    engine = build_engine(cfg, meta.block_size)
    if getattr(engine, "real_time", False):  # a real server: nothing to simulate a baseline with
        baseline = "off"
    if baseline == "simulate":
        check_prefix_reuse(cfg)
    api = ApiPricing.from_cfg(cfg.pricing.api)
    self_hosted = SelfHostedPricing.from_cfg(cfg.pricing.self_hosted)
    self_hosted.check_priced(getattr(engine, "priced_tiers", ()))  # before a long run, not after
    power_w = float(cfg.hardware.get("power_w") or 0.0)
    gpus, hardware_name, pools_ = int(cfg.parallel.tp) * int(cfg.instances), cfg.hardware.name, None
    if deployment_mode(cfg) == "pd":  # every pool's GPUs, each at its own price
        pools_ = deployment_pools(cfg)
        gpus, price, power_w = blended(pools_)
        self_hosted = dataclasses.replace(self_hosted, gpu_hour_usd=price)
        hardware_name = describe(pools_)
    r = cfg.replay
    opts = ReplayOptions(mode=r.mode, time_scale=float(r.time_scale),
                         session_rate_per_s=r.session_rate_per_s, sample_sessions=r.sample.sessions,
                         sample_ratio=r.sample.ratio, limit=r.limit, seed=int(cfg.seed),
                         progress=bool(r.progress), shards=int(r.get("shards", 1)),
                         shard=int(r.get("shard", 0)))
    engine_rows = run_dir / ".requests.engine.parquet"
    biller = Biller(api, ModelPrices(cfg.pricing.get("models") or {}), meta.block_size,
                    warm_start=bool(cfg.replay.get("api_warm_start", True)))
    bill_stream = open_bill(cfg, biller, path, opts)
    try:
        ctrl_c.start()
        result = simulate(path, engine, opts, engine_rows, bill_stream, ctrl_c)
        bill = bill_stream.close()
    finally:
        bill_stream.abort()
    timeline = result.engine_stats.pop("timeline", None)
    if timeline:
        write_atomic(run_dir / "timeline.parquet", pl.DataFrame(timeline).write_parquet)
    tiers = engine.tier_names
    extra = tuple(getattr(engine, "extra_columns", ()))
    del engine  # the baseline's engine is built next: never two in memory
    base_frame, base_storage = None, None
    interrupted = result.interrupted
    if baseline == "simulate" and not (interrupted or ctrl_c.pressed):  # Ctrl-C: no second run
        base_rows = run_dir / ".requests.no_reuse.parquet"
        no_reuse = build_engine(cfg, meta.block_size, prefix_reuse=False)
        base_result = simulate(path, no_reuse, dataclasses.replace(opts, progress_label="no-reuse baseline"),
                               base_rows, ctrl_c=ctrl_c)  # (a press since stops it at its first turn)
        interrupted = base_result.interrupted
        if not interrupted:
            base_frame, base_storage = baseline_frame(base_rows, tiers), storage_usd(self_hosted, base_result)
        base_rows.unlink()
    gpu_cost = self_hosted.gpu_cost
    requests = assemble(engine_rows, run_dir / "requests.parquet", tiers, base_frame, bill, {
        "cost_usd": gpu_cost(pl.col("gpu_s"), power_w),
        "no_reuse_cost_usd": gpu_cost(pl.col("no_reuse_gpu_s"), power_w),
        "api_no_reuse_cost_usd": api.no_reuse_cost(pl.col("input_tokens"), pl.col("output_tokens")),
    }, extra)
    engine_rows.unlink()
    summary = summarize(
        requests, tiers, self_hosted, gpus, power_w,
        storage_usd(self_hosted, result), base_storage,
        trace=str(cfg.trace.get("generator") or cfg.trace.get("path")),
        engine=str(cfg.engine._target_).rsplit(".", 1)[-1], model=cfg.model.name,
        hardware=hardware_name, cache=cfg.cache.name, pricing=cfg.pricing.api.model,
        tp=int(cfg.parallel.tp), instances=int(cfg.instances), mode=opts.mode,
        interrupted=interrupted or ctrl_c.pressed, calls_sent=result.sent, engine_stats=result.engine_stats,
        slo=Slo.from_cfg(cfg.get("slo")),
        capacity_bytes_by_tier=result.engine_stats.get("capacity_bytes_by_tier"),
    )
    if pools_ is not None:
        summary["deployment"] = "pd"
        summary["pools"] = pool_figures(requests, pools_, summary["span_s"], self_hosted)
    summary.update(load_figures(requests, load, np.random.default_rng(int(cfg.seed))))
    summary["interrupted"] = interrupted or ctrl_c.pressed  # (pressed in the summary's own work too)
    write_summary(summary, run_dir / "summary.json")
    ctrl_c.stop()  # the run's files are complete: a press now just stops the plots
    if cfg.get("plots", True) and not summary["interrupted"]:
        from replay.plots import run_plots

        run_plots(run_dir, summary, tiers, self_hosted.gpu_hour_usd)
    return summary


def record_failure(run_dir: Path, reason: str) -> None:
    """Leave the reason in the run folder, so a sweep's comparison table can show it (if the
    folder cannot be written, the error line on stderr still says it)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FAILED).write_text(json.dumps({"status": "failed", "error": reason}) + "\n")
    except OSError:
        pass


@hydra.main(version_base=None, config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """One run. A bad input is one line and exit 1; in a sweep (-m) a failing job is recorded
    (failed.json) and the sweep goes on to the next job, and to its comparison table."""
    from replay.summary import table

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg, run_dir)
    except (TraceError, ConfigError, OmegaConfBaseException) as exc:
        reason = f"{exc}".splitlines()[0]
        record_failure(run_dir, reason)
        print(f"error: {reason}", file=sys.stderr)
        if sweep:
            return None
        sys.exit(1)
    except KeyboardInterrupt:  # before the replay, or a second press after it: nothing to keep
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug: the traceback is shown, and a sweep still goes on
        record_failure(run_dir, f"{type(exc).__name__}: {exc}".splitlines()[0])
        if not sweep:
            raise
        import traceback

        traceback.print_exc()
        return None
    tp = "" if "pools" in summary else f" x{summary['tp']}"  # pd: the pools name their tp
    print(f"\n{summary['trace']} on {summary['engine']}: {summary['model']} / {summary['hardware']}"
          f"{tp} / cache {summary['cache']} / {summary['pricing']}"
          + ("  [interrupted: partial results]" if summary["interrupted"] else ""))
    print(table(summary))
    print(f"outputs: {run_dir}")
    if summary["interrupted"]:  # Ctrl-C: the finished calls are kept, and the exit says so
        sys.exit(130)
    return summary["reuse"]


if __name__ == "__main__":
    main()
