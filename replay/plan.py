"""`replay-plan`: for each candidate deployment, the highest session rate that meets the SLO,
and what a session costs there.

A plan (``conf/plan/NAME.yaml`` or a file) names a workload (a generator config or a trace
file: the session pool), the SLO, the search settings, overrides shared by every candidate and
the candidates (a grid of config choices, a list, or both). For each candidate the search
replays the pool at Poisson session rates through ``replay.app.run`` (the same pieces as
`replay`, with ``replay.baseline=off`` and ``plots=false``):

- Fixed simulated time: a probe at rate r (sessions/s per instance) replays the first
  k = ceil(r x instances x duration_s) sessions of the pool (in start order), so every probe
  covers the same span of session arrivals. The runner draws the arrival gaps from the same
  seeded stream and scales them by 1/rate, so probes share their random numbers (session i
  starts at S_i / rate): pass or fail moves with the rate, not with the draws.
- Warm-up and drain: calls sent in the first ``warmup_fraction`` of the arrival span (the system
  fills from empty) and after the last session started (load falls) are not measured
  (``slo.warmup_fraction``, ``slo.exclude_drain``; replay/goodput.py).
- Bracketing: from ``start_rate_per_s``, multiply by ``growth`` until a probe fails (or divide
  until one passes; none by ``min_rate_per_s``: the candidate cannot meet the SLO), then bisect
  geometrically until fail / pass <= 1 + ``precision``. The rate reported passed; the true
  limit lies below the failing rate, within ``precision`` of it.

What limited a candidate is read off the first failing probe (see ``limiter``).

The precision is the bracket's, not the answer's: near the limit a p99 over a few thousand calls
moves by tenths of a second from one set of arrival draws to another, so pass/fail is not
strictly monotone in the rate and a candidate's limit carries that noise (``confirm_seeds``
replays the rate found with other seeds and reports how many still meet the SLO; longer
``duration_s`` narrows it).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

import click
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from engines.specs import ConfigError, check_keys
from replay.cost import SelfHostedPricing
from replay.goodput import Slo, measured
from replay.sweep import markdown
from traces.io import read_meta, read_table, write_table
from traces.schema import TraceError

PLAN_DIR = Path(__file__).resolve().parent.parent / "conf" / "plan"
FIXED = ["replay.baseline=off", "plots=false", "replay.progress=false", "replay.mode=closed"]
REUSE_DROP = 0.05  # reuse falling by this much between the lowest and the failing probe: capacity


# -- config -------------------------------------------------------------------------------------
def load_plan(name_or_path: str) -> DictConfig:
    """A plan file: a path, or the name of one in conf/plan/."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PLAN_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PLAN_DIR.glob("*.yaml")))
        raise ConfigError(f"plan {name_or_path!r}: no such file (shipped plans: {known})")
    try:
        return OmegaConf.load(path)
    except (OSError, OmegaConfBaseException) as exc:
        raise ConfigError(f"plan {path}: {str(exc).splitlines()[0]}") from None


_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def compose(overrides: list[str]) -> DictConfig:
    """The `replay` config with ``overrides``, as the command line would make it (remembered:
    Hydra's compose costs more than a small replay)."""
    key = tuple(overrides)
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(list(overrides))
    return _COMPOSED[key].copy()


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        if GlobalHydra.instance().is_initialized():  # inside someone's initialize block
            return hydra_compose("config", overrides=list(overrides))
        with initialize_config_module("conf", version_base=None):  # left as found
            return hydra_compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"overrides {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None


@dataclass(frozen=True)
class Search:
    start_rate_per_s: float = 0.01
    growth: float = 2.0
    precision: float = 0.02
    min_rate_per_s: float = 1e-4
    max_rate_per_s: float = 100.0
    duration_s: float | None = None  # session-arrival span; None: lifetimes x mean session length
    lifetimes: float = 3.0
    warmup_fraction: float = 0.3
    confirm_seeds: float = 0  # replay the rate found with this many other seeds (its noise)

    @classmethod
    def from_cfg(cls, cfg: Any) -> Search:
        cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        check_keys(cfg, tuple(cls.__dataclass_fields__), "plan search")
        try:
            s = cls(**{k: (None if v is None else float(v)) for k, v in cfg.items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"plan search: {exc}") from None
        if not (0 < s.min_rate_per_s <= s.start_rate_per_s <= s.max_rate_per_s):
            raise ConfigError("plan search: need 0 < min_rate_per_s <= start_rate_per_s <= max_rate_per_s")
        if not s.growth > 1 or not s.precision > 0:
            raise ConfigError("plan search: growth must be > 1 and precision > 0")
        if s.duration_s is not None and not s.duration_s > 0:
            raise ConfigError("plan search: duration_s must be > 0 (or null)")
        if not 0 <= s.warmup_fraction < 1:
            raise ConfigError("plan search: warmup_fraction must be in [0, 1)")
        return s


def candidates(plan: DictConfig) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every candidate: the grid's product, then the listed ones."""
    out: list[tuple[str, list[str]]] = []
    grid = plan.get("grid") or {}
    keys = list(grid)
    for values in product(*[list(grid[k]) if isinstance(grid[k], ListConfig) else [grid[k]] for k in keys]
                          ) if keys else ():  # no grid: no empty candidate
        overrides = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        out.append((" ".join(overrides), overrides))
    for c in plan.get("candidates") or []:
        overrides = [str(o) for o in c.get("overrides", [])]
        out.append((str(c.get("name") or " ".join(overrides)), overrides))
    if not out:
        raise ConfigError("plan: no candidates (give a grid: or candidates:)")
    return out


# -- the session pool ------------------------------------------------------------------------
@dataclass
class Pool:
    """The workload's sessions in start order; ``subset(k)`` writes the first k as a trace."""

    path: Path
    order: list[str]  # session ids by first send
    mean_session_s: float
    _table: pa.Table | None = field(default=None, repr=False)

    @classmethod
    def build(cls, plan: DictConfig, out: Path) -> Pool:
        w = plan.get("workload") or {}
        if w.get("path"):
            path = Path(str(w.path))
            read_meta(path)
        else:
            cfg = compose([str(o) for o in w.get("overrides", [])]
                          + [f"trace.sessions={int(w.get('pool_sessions', 200))}"])
            if cfg.trace.get("kind") != "generate":
                raise ConfigError("plan workload: give workload.path, or overrides naming a generator trace")
            from traces.synth import generate

            out.mkdir(parents=True, exist_ok=True)
            path = out / "pool.parquet"
            generate(cfg.trace, path)
        calls = pl.read_parquet(path, columns=["session_id", "arrival_s"]).with_row_index("row")
        starts = (calls.group_by("session_id")
                  .agg(pl.col("arrival_s").min().alias("start"), pl.col("row").min().alias("first"),
                       (pl.col("arrival_s").max() - pl.col("arrival_s").min()).alias("length"))
                  .sort("start", "first"))
        return cls(path, starts["session_id"].to_list(), float(starts["length"].mean()))

    def subset(self, k: int, dest: Path) -> Path:
        """The first ``k`` sessions of the pool as a trace file at ``dest``."""
        if self._table is None:
            self._table = read_table(self.path)
        keep = pa.array(self.order[:k])
        table = self._table.filter(pc.is_in(self._table["session_id"], value_set=keep))
        write_table(dest, table, read_meta(self.path))
        return dest


# -- one probe and the search ------------------------------------------------------------------
@dataclass
class Probe:
    rate_per_s: float  # sessions/s per instance
    met: bool
    run_dir: Path
    summary: dict[str, Any]


def probe(cfg: DictConfig, pool: Pool, search: Search, rate: float, run_dir: Path) -> Probe:
    """Replay the pool's first sessions at ``rate`` sessions/s per instance on the candidate
    ``cfg`` (composed once: Hydra's compose costs more than a small replay); did it meet the SLO?"""
    from replay.app import run

    instances = shape(cfg)["instances"]
    duration = search.duration_s or search.lifetimes * pool.mean_session_s
    k = max(1, math.ceil(rate * instances * duration))
    if k > len(pool.order):
        raise ConfigError(f"rate {rate:.4g}/s per instance needs {k} sessions over {duration:.0f} s; the "
                          f"pool has {len(pool.order)}: raise workload.pool_sessions or lower max_rate_per_s")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.copy()
    cfg.trace.path = str(pool.subset(k, run_dir / "trace.parquet"))
    cfg.replay.session_rate_per_s = rate * instances
    OmegaConf.save(cfg, run_dir / "config.yaml")
    summary = run(cfg, run_dir)
    if summary["interrupted"]:  # Ctrl-C: a partial probe must not judge the rate
        raise KeyboardInterrupt
    return Probe(rate, bool(summary["goodput"]["met"]), run_dir, summary)


def shape(cfg: DictConfig) -> dict[str, Any]:
    """A candidate's size: colocated, ``instances`` of ``parallel.tp`` GPUs (rates are per
    instance); deployment=pd, one unit of both pools (rates are per deployment), its GPUs and
    their GPU-weighted price and power (replay/pools.py)."""
    from replay.pools import blended, describe, mode, pools

    pricing = SelfHostedPricing.from_cfg(cfg.pricing.self_hosted)
    if mode(cfg) == "pd":
        ps = pools(cfg)
        gpus, price, power_w = blended(ps)
        return {"instances": 1, "gpus": gpus, "tp": gpus, "hardware": describe(ps), "power_w": power_w,
                "pricing": replace(pricing, gpu_hour_usd=price)}
    tp, instances = int(cfg.parallel.tp), int(cfg.instances)
    return {"instances": instances, "gpus": tp * instances, "tp": tp, "hardware": cfg.hardware.name,
            "power_w": float(cfg.hardware.get("power_w") or 0.0), "pricing": pricing}


def bracket(test: Callable[[float], bool], search: Search) -> tuple[float | None, float | None]:
    """(highest passing rate, lowest failing rate) to within ``precision``: (None, r) if nothing
    down to ``min_rate_per_s`` passes; (r, None) if ``max_rate_per_s`` still passes."""
    lo = hi = None
    rate = search.start_rate_per_s
    if test(rate):
        lo = rate
        while hi is None:
            rate = min(rate * search.growth, search.max_rate_per_s)
            if rate <= lo:
                return lo, None
            if test(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo is None:
            rate = rate / search.growth
            if rate < search.min_rate_per_s:
                return None, hi
            if test(rate):
                lo = rate
            else:
                hi = rate
    while hi / lo > 1 + search.precision:
        mid = math.sqrt(lo * hi)
        if test(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def limiter(fail: Probe, low: Probe, slo: Slo) -> str:
    """What stopped the candidate, from its first failing probe. TPOT missed alone: decode
    compute. Otherwise the calls that missed are split into waiting to be admitted (queue_s:
    a slot or KV space), waiting for cached KV to land (load_s: a link) and the rest (prefill,
    including waiting for the instance's prefill): the largest part names it, and prefill counts
    as HBM capacity when reuse from HBM fell by more than 5 points between the lowest probe
    and the failing one (the cache held less of the sessions, so more was computed again)."""
    failed = fail.summary["goodput"]["failed_on"]
    if failed == ["tpot"]:
        return "compute (decode)"
    df = measured(pl.read_parquet(fail.run_dir / "requests.parquet"), slo)
    bad = df.filter(~pl.col("slo_met"))
    if bad.height == 0:
        bad = df
    queue, load, ttft = (float(bad[c].mean() or 0.0) for c in ("queue_s", "load_s", "ttft_s"))
    parts = {"queueing": queue, "link": load, "compute (prefill)": ttft - queue - load}
    if "transfer_s" in bad.columns:  # deployment=pd: the KV's move and the wait for decode room
        transfer, room = (float(bad[c].mean() or 0.0) for c in ("transfer_s", "decode_queue_s"))
        parts.update({"queueing": queue + room, "KV transfer": transfer,
                      "compute (prefill)": ttft - queue - load - transfer - room})
    name = max(parts, key=parts.get)
    if name == "link":
        tiers = [t for t in fail.summary["reuse_by_tier"] if t != "hbm"]
        if tiers:
            name += " (" + max(tiers, key=lambda t: float(bad[f"reused_tokens_{t}"].sum())) + ")"
    hbm = lambda p: p.summary["reuse_by_tier"].get("hbm", 0.0)  # noqa: E731
    if name.startswith("compute") and hbm(low) - hbm(fail) > REUSE_DROP:
        name = "HBM capacity"
    return name


def candidate_cfg(plan_base: list[str], overrides: list[str]) -> DictConfig:
    """A candidate's replay config; each probe sets the trace file and the session rate."""
    return compose([*plan_base, *FIXED, *overrides, "trace=file", "trace.path=set_per_probe"])


def search_candidate(name: str, overrides: list[str], plan_base: list[str], pool: Pool, search: Search,
                     slo: Slo, out: Path, on_probe: Callable[[], None] | None = None) -> dict[str, Any]:
    """One candidate's search and its row of the plan table."""
    cfg = candidate_cfg(plan_base, overrides)
    probes: list[Probe] = []

    def test(rate: float) -> bool:
        p = probe(cfg, pool, search, rate, out / f"probe{len(probes):02d}")
        probes.append(p)
        if on_probe is not None:
            on_probe()
        return p.met

    t0 = time.perf_counter()
    size = shape(cfg)
    tp, instances = size["tp"], size["instances"]
    most = len(pool.order) / (instances * (search.duration_s or search.lifetimes * pool.mean_session_s))
    if most < search.max_rate_per_s:  # a probe replays at most the whole pool
        search = replace(search, max_rate_per_s=most, start_rate_per_s=min(search.start_rate_per_s, most))
    lo, hi = bracket(test, search)
    row: dict[str, Any] = {
        "candidate": name, "overrides": " ".join(overrides), "hardware": size["hardware"],
        "tp": tp, "instances": instances, "cache": cfg.cache.name,
        "engine": str(cfg.engine._target_).rsplit(".", 1)[-1], "gpus": size["gpus"],
        "probes": len(probes), "search_s": time.perf_counter() - t0,
    }
    by_rate = {p.rate_per_s: p for p in probes}
    low = min(probes, key=lambda p: p.rate_per_s)
    if lo is None:
        g = by_rate[hi].summary["goodput"]
        row.update(status=f"cannot meet the SLO: even at {hi:.3g} sessions/s per instance "
                          f"{', '.join(g['failed_on'])} missed",
                   fail_run=str(by_rate[hi].run_dir))
        return row
    at = by_rate[lo]
    s, g = at.summary, at.summary["goodput"]
    confirmed = []
    for i in range(int(search.confirm_seeds)):  # the same rate, other arrival draws
        other = cfg.copy()
        other.seed = int(cfg.seed) + 1 + i
        confirmed.append(probe(other, pool, search, lo, out / f"confirm{i}").met)
    pricing, power_w, gpus = size["pricing"], size["power_w"], size["gpus"]
    sessions = s["sessions"]
    tokens = (s["input_tokens"] + s["output_tokens"]) / sessions
    # provisioned cost at the rate: every GPU and every KV tier bought for 1/rate seconds per
    # session, energy of the busy GPU-seconds a session took, KV it held in tiers billed on use
    # (all measured in the probe at ``lo``)
    per_session_s = 1.0 / (lo * instances)
    held = {tier: usd / sessions for tier, usd in s["storage_usd_by_tier"].items()}
    usd = (pricing.provisioned_cost(gpus, per_session_s, s["gpu_s"] / sessions, power_w)
           + sum(pricing.provisioned_storage_cost(s.get("capacity_bytes_by_tier") or {}, per_session_s,
                                                  held).values()))
    row.update(
        status="ok" if hi is not None else (f"still meets the SLO at {search.max_rate_per_s:.4g} sessions/s "
                                            "per instance (max_rate_per_s, or the whole pool)"),
        max_sessions_per_s_per_instance=lo,
        max_sessions_per_s_per_gpu=lo / tp,  # pd: tp is the deployment's GPUs
        usd_per_session=usd,
        usd_per_mtok=usd / (tokens / 1e6),
        reuse=s["reuse"],
        **{f"reuse_{t}": v for t, v in s["reuse_by_tier"].items()},
        ttft_at_limit_s=g["ttft_at_percentile_s"], tpot_at_limit_s=g["tpot_at_percentile_s"],
        sessions_met_share=g["sessions_met_share"],
        confirmed_by_other_seeds=f"{sum(confirmed)}/{len(confirmed)}" if confirmed else None,
        limited_by=limiter(by_rate[hi], low, slo) if hi is not None else "none (max rate)",
        limit_run=str(at.run_dir),
        fail_run=str(by_rate[hi].run_dir) if hi is not None else None,
    )
    return row


# -- the plan --------------------------------------------------------------------------------
PLAN_KEYS = ("workload", "slo", "search", "base", "grid", "candidates")
WORKLOAD_KEYS = ("overrides", "pool_sessions", "path")
CANDIDATE_KEYS = ("name", "overrides")


def plan_slo(plan: DictConfig, search: Search) -> tuple[Slo, list[str]]:
    """The SLO every probe is judged by, and the overrides that set it in the replay config."""
    items = dict(OmegaConf.to_container(plan.get("slo") or {}, resolve=True))
    items.update(warmup_fraction=search.warmup_fraction, exclude_drain=True)
    slo = Slo.from_cfg(items)
    if slo is None:
        raise ConfigError("plan slo: give ttft_s and/or tpot_s")
    return slo, [f"slo.{k}={'null' if v is None else v}" for k, v in items.items()]


@dataclass
class Prepared:
    """A plan made ready to search: settings, SLO, shared overrides, candidates, session pool."""

    search: Search
    slo: Slo
    base: list[str]
    candidates: list[tuple[str, list[str]]]
    pool: Pool


def prepare(plan: DictConfig, out: Path, extra: Iterable[str] = ()) -> Prepared:
    """Check the plan (a bad override fails now, not after other candidates ran) and build the
    session pool."""
    out.mkdir(parents=True, exist_ok=True)
    check_keys(plan, PLAN_KEYS, "plan")  # a plan file is not checked by Hydra: a typo would be ignored
    check_keys(plan.get("workload") or {}, WORKLOAD_KEYS, "plan workload")
    for c in plan.get("candidates") or []:
        check_keys(c, CANDIDATE_KEYS, "plan candidate")
    search = Search.from_cfg(plan.get("search"))
    slo, slo_overrides = plan_slo(plan, search)
    base = [*[str(o) for o in plan.get("base") or []], *slo_overrides, *extra]
    cands = candidates(plan)
    for _, overrides in cands:
        candidate_cfg(base, overrides)
    pool = Pool.build(plan, out)
    OmegaConf.save(plan, out / "plan.yaml")
    return Prepared(search, slo, base, cands, pool)


def run_plan(plan: DictConfig, out: Path, jobs: int = 1, extra: Iterable[str] = (),
             progress: bool = True) -> pl.DataFrame:
    """Search every candidate of ``plan``; write plan.parquet, plan.csv, plan.md and pareto.png
    to ``out``; return the table sorted by $ per session."""
    p = prepare(plan, out, extra)
    search = p.search
    dirs = [out / f"c{i:02d}" for i in range(len(p.candidates))]
    # rough total for the bar: growing ~3 probes, bisecting from growth to 1 + precision
    per = 3 + math.ceil(math.log2(math.log(search.growth) / math.log1p(search.precision)))
    bar = tqdm(total=per * len(p.candidates), unit="probe", desc="plan", disable=not progress or None)
    args = [(n, o, p.base, p.pool, search, p.slo, d) for (n, o), d in zip(p.candidates, dirs, strict=True)]
    if jobs == 1:
        rows = [search_candidate(*a, on_probe=lambda: bar.update(1)) for a in args]
    else:
        from joblib import Parallel, delayed

        rows = []
        for row in Parallel(n_jobs=jobs, return_as="generator_unordered")(
                delayed(search_candidate)(*a) for a in args):
            rows.append(row)
            bar.update(row["probes"])
    bar.close()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    if "usd_per_session" not in frame.columns:
        frame = frame.with_columns(usd_per_session=pl.lit(None, pl.Float64))
    frame = frame.sort("usd_per_session", nulls_last=True)
    frame.write_parquet(out / "plan.parquet")
    frame.write_csv(out / "plan.csv")
    (out / "plan.md").write_text(markdown(shown(frame)) + "\n")
    pareto_plot(frame, out / "pareto.png")
    return frame


SHOWN = ["candidate", "max_sessions_per_s_per_gpu", "usd_per_session", "usd_per_mtok", "reuse",
         "ttft_at_limit_s", "tpot_at_limit_s", "limited_by", "confirmed_by_other_seeds", "status"]


def shown(frame: pl.DataFrame) -> pl.DataFrame:
    """The columns of the printed table, and the reuse of each tier."""
    tiers = [c for c in frame.columns if c.startswith("reuse_")]
    cols = [c for c in SHOWN[:5] + tiers + SHOWN[5:] if c in frame.columns]
    return frame.select(cols)


def short(candidate: str) -> str:
    """A candidate's overrides without their group prefixes, for labels."""
    for prefix in ("hardware=", "parallel.", "cache=", "engine="):
        candidate = candidate.replace(prefix, "")
    return candidate


def pareto_plot(frame: pl.DataFrame, path: Path) -> Path:
    """$ per session against sessions/s per GPU; the Pareto front (no other candidate both
    cheaper and faster) joined by a line."""
    from replay.plots import DPI, plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    ok = frame.filter(pl.col("usd_per_session").is_not_null()) if "max_sessions_per_s_per_gpu" in \
        frame.columns else frame.head(0)
    pts = list(zip(ok["max_sessions_per_s_per_gpu"].to_list() if ok.height else [],
                   ok["usd_per_session"].to_list() if ok.height else [],
                   ok["candidate"].to_list() if ok.height else [], strict=True))
    stacked: dict[float, int] = {}  # the tier sets of one GPU and tp share a rate: their labels
    for x, y, label in sorted(pts, key=lambda p: (p[0], -p[1])):  # stack, dearest on top
        k = stacked[x] = stacked.get(x, -1) + 1
        ax.scatter(x, y, s=24)
        ax.annotate(short(label), (x, y), fontsize=6, xytext=(4, 4 - 9 * k), textcoords="offset points")
    front = sorted((p for p in pts if not any(q[0] >= p[0] and q[1] <= p[1] and q[:2] != p[:2]
                                              for q in pts)), key=lambda p: p[0])
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--o", lw=0.8, mfc="none", ms=10,
                label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("max sessions/s per GPU meeting the SLO")
    ax.set_ylabel("provisioned $ per session at that rate")
    ax.set_title("Capacity plan")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def html_section(plan_dir: Path) -> str:
    """The plan's table and Pareto plot for `replay-report`'s HTML."""
    import base64
    import html

    frame = shown(pl.read_parquet(plan_dir / "plan.parquet"))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                   for row in frame.iter_rows())
    img = ""
    if (plan_dir / "pareto.png").exists():
        data = base64.b64encode((plan_dir / "pareto.png").read_bytes()).decode()
        img = f'<img alt="pareto" src="data:image/png;base64,{data}">'
    return (f"<h2>Capacity plan: {html.escape(str(plan_dir))}</h2>"
            f"<table><tr>{head}</tr>{body}</table>{img}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--plan", "plan_name", default="coding_agent", show_default=True,
              help="A plan in conf/plan/ (by name) or a plan YAML file.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder (default: plans/<date>/<time>).")
@click.option("--jobs", default=1, show_default=True,
              help="Candidates searched in parallel processes (joblib); on 2 cores this gains little.")
@click.argument("overrides", nargs=-1)
def main(plan_name: str, out: Path | None, jobs: int, overrides: tuple[str, ...]) -> None:
    """Find, for each candidate deployment, the highest session rate that meets the SLO and the
    cost per session there. OVERRIDES (key=value) apply to every candidate."""
    if out is None:
        out = Path("plans") / time.strftime("%Y-%m-%d/%H-%M-%S")
    try:
        frame = run_plan(load_plan(plan_name), out, jobs=jobs, extra=overrides)
    except (ConfigError, TraceError, OmegaConfBaseException) as exc:
        click.echo(f"error: {exc}".splitlines()[0], err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(f"interrupted: no plan written (the probes that ran are under {out}/c*/)", err=True)
        sys.exit(130)
    click.echo(markdown(shown(frame)))
    click.echo(f"\nwrote {out}/plan.md, plan.csv, plan.parquet, pareto.png (runs under {out}/c*/)")


if __name__ == "__main__":
    main()
