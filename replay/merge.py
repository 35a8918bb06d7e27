"""`replay-merge`: the shards of one sharded replay (``replay.shards=N 'replay.shard=range(0,N)'``)
made into one run: one requests.parquet (every shard's calls, in intended send order) and one
summary.json recomputed from it, so percentiles are over all calls, not averages of shards.

    replay-merge multirun/2026-01-01/12-00-00-000000          # its numbered shard folders
    replay-merge shard0/ shard1/ ... --out merged/
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import polars as pl
from omegaconf import OmegaConf

from engines.specs import ConfigError
from replay.cost import SelfHostedPricing
from replay.summary import summarize, table, write_summary

CONTEXT = ("trace", "engine", "model", "hardware", "cache", "pricing", "tp", "instances", "mode")


def shard_dirs(paths: list[Path]) -> list[Path]:
    """Run folders: each path itself if it holds requests.parquet, else its subfolders that do."""
    out: list[Path] = []
    for p in paths:
        if (p / "requests.parquet").exists():
            out.append(p)
        else:
            out.extend(sorted(d for d in p.iterdir() if (d / "requests.parquet").exists()))
    if not out:
        raise ConfigError(f"no requests.parquet under {', '.join(map(str, paths))}")
    return out


def merge(dirs: list[Path], out: Path) -> dict[str, Any]:
    """Write ``out``/requests.parquet and summary.json from the shard run folders ``dirs``."""
    frames = [pl.read_parquet(d / "requests.parquet") for d in dirs]
    requests = pl.concat(frames).sort("arrival_s", "request_id")
    dup = requests.filter(pl.col("request_id").is_duplicated())
    if dup.height:
        raise ConfigError(f"request {dup['request_id'][0]} is in more than one shard: not shards of one run")
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    cfg = OmegaConf.load(dirs[0] / ".hydra" / "config.yaml")
    tiers = [c.removeprefix("reused_tokens_") for c in requests.columns if c.startswith("reused_tokens_")]
    first = summaries[0]
    held: dict[str, float] = {}  # the KV each shard's tiers held, priced; the tiers are the deployment's
    for s in summaries:
        for tier, usd in (s.get("storage_usd_by_tier") or {}).items():
            held[tier] = held.get(tier, 0.0) + usd
    summary = summarize(
        requests, tiers, SelfHostedPricing.from_cfg(cfg.pricing.self_hosted),
        int(cfg.parallel.tp) * int(cfg.instances), float(cfg.hardware.get("power_w") or 0.0),
        held, capacity_bytes_by_tier=first.get("capacity_bytes_by_tier"),
        **{k: first.get(k) for k in CONTEXT},
        interrupted=any(s.get("interrupted") for s in summaries),
        calls_sent=sum(s.get("calls_sent") or 0 for s in summaries),
        engine_stats={"shards": [s.get("engine_stats") for s in summaries]},
        merged_from=[str(d) for d in dirs],
    )
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".requests.parquet.tmp"
    requests.write_parquet(tmp, compression="zstd")
    os.replace(tmp, out / "requests.parquet")
    write_summary(summary, out / "summary.json")
    return summary


@click.command()
@click.argument("dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the merged run (default: DIRS[0]/merged).")
def main(dirs: tuple[Path, ...], out: Path | None) -> None:
    """Merge the shard runs under DIRS (run folders, or a multirun folder) into one run."""
    try:
        found = shard_dirs(list(dirs))
        target = out or dirs[0] / "merged"
        summary = merge([d for d in found if d.resolve() != target.resolve()], target)
    except (ConfigError, OSError) as exc:
        click.echo(f"error: {exc}".splitlines()[0], err=True)
        sys.exit(1)
    click.echo(table(summary))
    click.echo(f"merged {len(found)} shards into {target}")


if __name__ == "__main__":
    main()
