"""Fit the analytic model's hardware factors to the torch engine's measured times.

Calls replayed on the torch engine itself: prefill over a grid of new and cached lengths (TTFT,
admission included), decode over batch sizes (TPOT). ``fit`` turns them into the analytic
model's flops and attention efficiencies, per-forward overhead and hbm efficiency; ``fit_errors``
says how well the fitted roofline reproduces each measured point. Writes
<run folder>/hardware/<hardware>_calibrated_<model>.yaml, a config group option a replay picks
up with ``hydra.searchpath`` (``replay-calibrate --help``), never over the package's own conf/
(whose options win over a search path's of the same name: hence the model in the name).

torch, numpy and the engine are imported inside the functions that use them, so
``replay-calibrate --help`` prints without loading torch.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import numpy as np

    from engines.base import Request
    from engines.specs import HardwareSpec, ModelSpec

PREFILL_GRID = [(n, c) for c in (0, 512, 1024, 2048) for n in (32, 64, 128, 256, 512, 1024)]
DECODE_GRID = [(b, 512) for b in (1, 2, 4, 8, 16)]


def _conf(group: str, name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    text = resources.files("conf").joinpath(group, f"{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text), resolve=False)


def _request(rid: str, blocks: np.ndarray, input_tokens: int, output_tokens: int, bs: int) -> Request:
    from engines.base import Request
    from traces.hashing import output_blocks_after

    return Request(rid, rid, 0, "calibration", 0.0, input_tokens, output_tokens, blocks, bs,
                   output_blocks_after(blocks, rid, input_tokens, output_tokens, bs))


def measure(model_cfg: Mapping[str, Any], hw_cfg: Mapping[str, Any], repeats: int = 5, seed: int = 0,
            device: str = "cpu", block_size: int = 64, clock: str = "wall"
            ) -> dict[str, list[tuple[int, int, float]]]:
    """TTFT of prefill points (new, cached), the fastest of ``repeats`` (on a shared machine
    noise only adds time), and TPOT of decode points (batch, context), measured on the torch
    engine itself, admission and token generation included. ``clock``: the engine's step clock
    (``cpu``: process CPU time, steady on a shared machine)."""
    import numpy as np

    from engines.torch_engine.engine import TorchEngine
    from traces.hashing import chain_hashes

    engine = TorchEngine(model_cfg, hw_cfg, {}, 1, 1, block_size, pool_blocks=4096, seed=seed,
                         device=device, max_batched_tokens=4096, max_running=64, clock=clock)
    bs = block_size
    keys = iter(range(1, 10**9, 10**5))

    def fresh(n_blocks: int) -> np.ndarray:
        return chain_hashes(None, np.arange(n_blocks, dtype=np.uint64) + np.uint64(next(keys)))

    def play(requests: list[Request], at: float) -> list:
        for r in requests:
            engine.submit(r, at)
        done = []
        while len(done) < len(requests):
            done += engine.advance(engine.next_event_time())
        return done

    out: dict[str, list[tuple[int, int, float]]] = {"prefill": [], "decode": []}
    clock = 0.0
    play([_request("warm", fresh(8), 8 * bs, 2, bs)], clock)  # first-call costs out of the way
    for n, c in PREFILL_GRID:
        times = []
        for r in range(repeats):
            prefix = fresh(c // bs)
            clock += 1000.0
            if c:
                play([_request(f"p{n}-{c}-{r}-a", prefix, c + 1, 1, bs)], clock)
            clock += 1000.0
            blocks = np.concatenate([prefix, fresh(n // bs)])
            done = play([_request(f"p{n}-{c}-{r}-b", blocks, c + n, 1, bs)], clock)
            times.append(done[0].first_token_s - clock)
        out["prefill"].append((n, c, min(times)))
    for b, ctx in DECODE_GRID:
        clock += 1000.0
        steps = 9
        done = play([_request(f"d{b}-{i}", fresh(ctx // bs), ctx, steps, bs) for i in range(b)], clock)
        tpot = [(d.finish_s - d.first_token_s) / (steps - 1) for d in done]
        out["decode"].append((b, ctx, statistics.median(tpot)))
    return out


Points = Mapping[str, list[tuple[int, int, float]]]


def fit(model: ModelSpec, hw: HardwareSpec, points: Points) -> dict[str, float]:
    """Factors that make the roofline match ``points`` (tp=1). Prefill time = dense FLOPs /
    (peak x flops efficiency) + attention FLOPs / (peak x attention efficiency) + overhead, by
    least squares on relative error; then decode time less the overhead = bytes / (bandwidth x
    hbm efficiency), the median over the decode points."""
    import numpy as np

    from engines.roofline import decode_step_bytes, prefill_flops_split

    split = np.array([prefill_flops_split(model, n, c) for n, c, _ in points["prefill"]])
    times = np.array([t for _, _, t in points["prefill"]])
    design = np.column_stack([split, np.ones(len(times))]) / times[:, None]
    (inv_dense, inv_attention, overhead), *_ = np.linalg.lstsq(design, np.ones(len(times)), rcond=None)
    overhead = max(float(overhead), 0.0)
    dense_rate = 1.0 / max(float(inv_dense), 1e-30)
    attention_rate = 1.0 / max(float(inv_attention), 1e-30)
    peak = max(hw.flops, dense_rate, attention_rate)  # a peak below what we measured was wrong
    decode_eff = [decode_step_bytes(model, b, ctx) / (max(t - overhead, 1e-9) * hw.hbm_bw)
                  for b, ctx, t in points["decode"]]
    return {"flops": float(peak), "flops_efficiency": float(dense_rate / peak),
            "attention_efficiency": float(attention_rate / peak),
            "hbm_efficiency": float(min(max(statistics.median(decode_eff), 1e-4), 1.0)),
            "overhead_s": overhead}


def fit_errors(model: ModelSpec, calibrated: HardwareSpec, points: Points
               ) -> list[tuple[str, int, int, float, float, float]]:
    """Each measured point beside the calibrated roofline's time for it: (kind, new tokens or
    batch, cached tokens or context, measured s, predicted s, relative error). In-sample: a
    bound on what the fit can reach, not a test of it on other shapes."""
    from engines.roofline import Roofline

    roof = Roofline(model, calibrated, 1)
    rows = []
    for kind, predict in (("prefill", roof.prefill_s), ("decode", roof.decode_step_s)):
        for a, b, measured in points[kind]:
            predicted = predict(a, b)
            rows.append((kind, a, b, measured, predicted, predicted / measured - 1))
    return rows


def calibrated_name(hw_name: str, model_name: str) -> str:
    return f"{hw_name}_calibrated_{model_name}"


def calibrated_cfg(hw_cfg: Mapping[str, Any], fitted: Mapping[str, float], name: str) -> dict[str, Any]:
    """The hardware config with the fitted factors in place."""
    cfg = dict(hw_cfg)
    cfg["name"] = name
    cfg["flops"] = fitted["flops"]
    cfg["efficiency"] = {**dict(hw_cfg["efficiency"]), "flops": round(fitted["flops_efficiency"], 4),
                         "attention": round(fitted["attention_efficiency"], 4),
                         "hbm": round(fitted["hbm_efficiency"], 4)}
    cfg["overhead_s"] = round(fitted["overhead_s"], 6)
    return cfg


def write_calibrated(hw_cfg: Mapping[str, Any], fitted: Mapping[str, float], model_name: str,
                     out: Path) -> Path:
    import torch
    from omegaconf import OmegaConf

    cfg = calibrated_cfg(hw_cfg, fitted, out.stem)
    header = (f"# Calibrated by replay-calibrate against the torch engine running model {model_name}\n"
              f"# on {torch.get_num_threads()} threads; refit on the machine you simulate.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return out


def calibrate(model_name: str, hw_name: str, out_dir: Path, repeats: int = 5, device: str = "cpu",
              clock: str = "wall") -> tuple[Path, list[tuple[str, int, int, float, float, float]]]:
    """Measure, fit and write ``out_dir``/hardware/<hw_name>_calibrated_<model_name>.yaml;
    returns its path and the fit's errors point by point."""
    from engines.specs import HardwareSpec, ModelSpec

    model_cfg, hw_cfg = _conf("model", model_name), _conf("hardware", hw_name)
    model = ModelSpec.from_cfg(model_cfg)
    points = measure(model_cfg, hw_cfg, repeats, device=device, clock=clock)
    fitted = fit(model, HardwareSpec.from_cfg(hw_cfg), points)
    name = calibrated_name(hw_name, model_name)
    errors = fit_errors(model, HardwareSpec.from_cfg(calibrated_cfg(hw_cfg, fitted, name)), points)
    path = write_calibrated(hw_cfg, fitted, model_name, out_dir / "hardware" / f"{name}.yaml")
    return path, errors


@click.command()
@click.option("--model", "model_name", default="small", show_default=True, help="A conf/model name.")
@click.option("--hardware", "hw_name", default="cpu", show_default=True, help="A conf/hardware name.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (as engine.threads).")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="CPU step clock (as engine.clock); cpu: process CPU time, steady on a busy machine.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Run folder for hardware/<hardware>_calibrated_<model>.yaml. "
                   "Default: outputs/calibrate/<date>/<time>.")
def main(model_name: str, hw_name: str, device: str, repeats: int, threads: int | None, clock: str,
         out_dir: Path | None) -> None:
    """Time prefill and decode of the torch engine's model and fit the analytic hardware model.

    Prints each measured point beside the fitted model's time for it (the fit's quality, in
    sample), writes the fitted hardware config into the run folder and the replay command that
    uses it. The package's own conf/ is never written.
    """
    for group, name in (("model", model_name), ("hardware", hw_name)):
        if not resources.files("conf").joinpath(group, f"{name}.yaml").is_file():
            raise click.ClickException(f"no such config: conf/{group}/{name}.yaml")
    import torch

    if threads:
        torch.set_num_threads(threads)
    out_dir = out_dir or Path("outputs/calibrate") / time.strftime("%Y-%m-%d/%H-%M-%S")
    path, errors = calibrate(model_name, hw_name, out_dir, repeats, device, clock)
    click.echo(f"{'':8} {'new/bat':>7} {'cached/ctx':>10} {'measured':>11} {'fitted':>11} {'error':>7}")
    for kind, a, b, measured, predicted, error in errors:
        click.echo(f"{kind:8} {a:7} {b:10} {measured * 1e3:8.2f} ms {predicted * 1e3:8.2f} ms {error:+7.1%}")
    sizes = [abs(e[-1]) for e in errors]
    click.echo(f"fit quality (in sample): median |error| {statistics.median(sizes):.1%}, "
               f"worst {max(sizes):.1%} over {len(sizes)} points")
    click.echo(f"wrote {path}\nuse it: replay 'hydra.searchpath=[file://{path.parents[1].resolve()}]' "
               f"hardware={path.stem} model={model_name} parallel.tp=1")


if __name__ == "__main__":
    sys.exit(main())
