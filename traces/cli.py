"""The `traces` command: generate, inspect and validate trace files."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from traces.errors import TraceError

GENERATOR_NAMES = {"coding-agent": "coding_agent", "email-drafting": "email_drafting"}


class TraceCommand(click.Group):
    """Turns TraceError (and an OS error no command caught, which names its file) into one
    line on stderr and exit code 1. Commands import what they need when they run, so --help
    loads nothing heavy."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TraceError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"error: {exc.filename or ''}: {exc.strerror or exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=TraceCommand)
def main() -> None:
    """Generate, inspect and validate agent-replay trace files (Parquet, schema v1)."""


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("generator", type=click.Choice(sorted(GENERATOR_NAMES)))
@click.argument("overrides", nargs=-1)
@click.option("--sessions", type=click.IntRange(min=1), help="Number of sessions (default: the yaml's).")
@click.option("--seed", type=int, help="Seed of the random generator (default: the yaml's).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file to write.")
def generate(generator: str, overrides: tuple[str, ...], sessions: int | None, seed: int | None,
             out: str) -> None:
    """Write a synthetic trace of GENERATOR sessions.

    OVERRIDES are key=value changes of the knobs in conf/trace/<generator>.yaml, e.g.
    `subagent.probability=0.1 arrival.rate_per_s=0.5`. The same seed and knobs give a
    byte-identical file.
    """
    from tqdm import tqdm

    from traces.synth import generate as run_generator
    from traces.synth import load_config

    extra = [f"sessions={sessions}"] if sessions else []
    extra += [f"seed={seed}"] if seed is not None else []
    cfg = load_config(GENERATOR_NAMES[generator], list(overrides) + extra)
    with tqdm(total=int(cfg.sessions), unit="session", desc=generator, disable=None) as bar:
        rows = run_generator(cfg, out, progress=lambda done: bar.update(done - bar.n))
    click.echo(f"wrote {rows} requests in {cfg.sessions} sessions to {out}")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def inspect(file: str, as_json: bool) -> None:
    """Print a trace's size, shape, timing, ideal prefix reuse and AIPerf's hit rate.

    ideal_reuse: the share of input tokens whose prefix blocks were all seen earlier in arrival
    order (infinite cache, prefix semantics, token-weighted; the last token is always computed;
    blocks a parent's output completed count as seen by its children).
    aiperf_hit_rate_unweighted: what `aiperf analyze-trace` prints as cache hit rate for the
    exported hash_ids: per request, the share of its prompt blocks before the first one no
    earlier prompt carried; the plain mean over requests (a short call weighs as much as a long
    one). Think-time percentiles cover the calls that have a parent.
    """
    from traces.stats import inspect as compute

    figures = compute(file)
    if as_json:
        click.echo(json.dumps(figures))
        return
    for key, value in figures.items():
        if isinstance(value, dict):
            inner = "  ".join(f"{k}={_fmt(v)}" for k, v in value.items())
            click.echo(f"{key:<24} {inner}")
        else:
            click.echo(f"{key:<24} {_fmt(value)}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@main.command()
@click.argument("file", type=click.Path())
def validate(file: str) -> None:
    """Check FILE against schema v1 and its invariants; list every problem (exit 1) or say ok."""
    from traces.io import read_meta
    from traces.validate import validate as check

    problems = check(file)
    if problems:
        for line in problems:
            click.echo(line)
        click.echo(f"{len(problems)} problem(s) in {file}", err=True)
        sys.exit(1)
    import pyarrow.parquet as pq

    read_meta(file)
    click.echo(f"ok: {pq.ParquetFile(file).metadata.num_rows} requests")


@main.command(name="import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(
    ["mooncake", "bailian", "weka", "claude-code", "codex", "azure"]))
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file to write.")
@click.option("--block-size", type=click.IntRange(min=1), help="Tokens per block (default: the "
              "format's: mooncake 512, bailian 16, others 64).")
@click.option("--strict", is_flag=True, help="Stop at the first bad line instead of skipping it.")
@click.option("--max-tokens", type=click.IntRange(min=1, max=2**31 - 1),
              help="Largest prompt or output of one call, in tokens; a line past it is bad "
              "(default: conf/limits.yaml, 10,000,000).")
def import_(fmt: str, paths: tuple[str, ...], out: str, block_size: int | None, strict: bool,
            max_tokens: int | None) -> None:
    """Import recorded calls from FORMAT files or folders into a trace.

    \b
    mooncake     Mooncake FAST'25 / AIPerf mooncake_trace JSONL
    bailian      Alibaba qwen-bailian-usagetraces-anon JSONL
    weka         SemiAnalysis Claude Code session traces (cc-traces-weka-*)
    claude-code  Claude Code transcripts (default: ~/.claude/projects, ~/.config/claude/projects,
                 or $CLAUDE_CONFIG_DIR/projects)
    codex        Codex CLI rollouts (~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl)
    azure        AzurePublicDataset CSV (TIMESTAMP, ContextTokens, GeneratedTokens)

    Bad lines are skipped, counted and reported (file:line and reason); --strict stops at the
    first. A call repeating an earlier call's id (a duplicated line) is dropped and reported, the
    first kept. The output appears only when the import completes and passes `traces validate`.
    """
    from traces.importers import import_trace

    if not paths and fmt != "claude-code":
        raise click.UsageError(f"{fmt} needs at least one PATH")
    written, problems = import_trace(fmt, list(paths), out, block_size, strict, max_tokens)
    report = problems.report()
    if report:
        click.echo(report, err=True)
    click.echo(f"wrote {written} calls to {out}")


@main.group()
def export() -> None:
    """Export a trace for other tools."""


@export.command(name="mooncake")
@click.argument("file", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write.")
@click.option("--block-size", default=512, show_default=True, type=click.IntRange(min=1),
              help="Tokens per hash id; a multiple of the trace's block size.")
def export_mooncake(file: str, out: str, block_size: int) -> None:
    """Write FILE as AIPerf-compatible Mooncake JSONL (with session_id and delay)."""
    from traces.export import export_mooncake as run_export

    n = run_export(file, out, block_size)
    click.echo(f"wrote {n} calls to {out}")


if __name__ == "__main__":
    main()
