"""A real server's reuse beside a simulator's, call by call: for every http run and every
simulator run of the same calls (among the runs given to ``replay-report``), the server's cached
tokens against the simulated reused tokens, and the measured TTFT against the predicted one."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

HTTP_ENGINE = "HttpEngine"


def _engine(run: Path) -> str | None:
    return json.loads((run / "summary.json").read_text()).get("engine")


def per_call(http_run: Path, sim_run: Path) -> pl.DataFrame:
    """One row per call both runs finished: server-reported vs simulated reuse and TTFT."""
    server = pl.read_parquet(http_run / "requests.parquet", columns=[
        "request_id", "input_tokens", "server_cached_tokens", "ttft_s", "error"])
    sim = pl.read_parquet(sim_run / "requests.parquet", columns=["request_id", "reused_tokens", "ttft_s"])
    sim = sim.rename({"ttft_s": "simulated_ttft_s", "reused_tokens": "simulated_reused_tokens"})
    return (server.join(sim, on="request_id", how="inner")
            .filter(pl.col("error").is_null())
            .with_columns(reuse_error_tokens=pl.col("server_cached_tokens").fill_null(0)
                          - pl.col("simulated_reused_tokens"),
                          ttft_error_s=pl.col("ttft_s") - pl.col("simulated_ttft_s"))
            .drop("error"))


def pair_figures(calls: pl.DataFrame) -> dict[str, float | int | None]:
    """Totals and errors of one server-vs-simulator pair."""
    inp = calls["input_tokens"].sum()
    return {
        "calls": calls.height,
        "server_reuse": calls["server_cached_tokens"].fill_null(0).sum() / inp if inp else None,
        "simulated_reuse": calls["simulated_reused_tokens"].sum() / inp if inp else None,
        "reuse_mean_abs_error_tokens": calls["reuse_error_tokens"].abs().mean(),
        "calls_with_equal_reuse": int((calls["reuse_error_tokens"] == 0).sum()),
        "ttft_p50_s": calls["ttft_s"].median(),
        "simulated_ttft_p50_s": calls["simulated_ttft_s"].median(),
        "ttft_median_abs_error_s": calls["ttft_error_s"].abs().median(),
    }


def write_server_comparison(runs: list[Path], out: Path) -> pl.DataFrame | None:
    """``out``/server_vs_simulated.csv (per call) and .md (per pair), if the runs hold an http run
    and a simulator run sharing calls; the per-pair table, or None."""
    engines = {run: _engine(run) for run in runs}
    servers = [r for r, e in engines.items() if e == HTTP_ENGINE]
    sims = [r for r, e in engines.items() if e != HTTP_ENGINE]
    frames, pairs = [], []
    for http_run in servers:
        for sim_run in sims:
            calls = per_call(http_run, sim_run)
            if calls.height == 0:
                continue
            frames.append(calls.with_columns(server_run=pl.lit(str(http_run)),
                                             simulated_run=pl.lit(str(sim_run))))
            pairs.append({"server_run": str(http_run), "simulated_run": str(sim_run), **pair_figures(calls)})
    if not pairs:
        return None
    pl.concat(frames).write_csv(out / "server_vs_simulated.csv")
    table = pl.DataFrame(pairs, infer_schema_length=None)
    table.write_csv(out / "server_vs_simulated_summary.csv")
    return table
