"""A sweep with a failing job: the job is recorded as failed with its reason, the later jobs
still run, the comparison table marks it and the sweep exits 1; replay-report skips it with a
note. A bare `replay --help` answers without loading Hydra or polars. Ctrl-C during a replay
keeps what finished and exits 130."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from replaykit import run_cli, start_cli, wait_for

from replay.report import main as report_main


def test_a_failing_sweep_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    result = run_cli("replay", "-m", "trace.sessions=2", "replay.mode=open,sideways,closed", "plots=false",
                     "replay.progress=false", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: replay.mode must be one of open, closed, got 'sideways'" in result.stderr
    assert "error: 1 of 3 jobs failed" in result.stderr
    sweep = next(tmp_path.glob("multirun/*/*"))
    table = pl.read_csv(sweep / "comparison.csv")
    assert table["run"].to_list() == [0, 1, 2]
    assert table["status"].to_list() == [
        "ok", "failed: replay.mode must be one of open, closed, got 'sideways'", "ok"]
    assert table["reuse"][1] is None and table["reuse"][2] > 0  # the job after the failure ran
    assert (sweep / "2" / "summary.json").exists() and (sweep / "1" / "failed.json").exists()
    assert "failed: replay.mode must be one of" in (sweep / "comparison.md").read_text()

    report = CliRunner().invoke(report_main, [str(sweep), str(sweep / "1"), "--out", str(tmp_path / "r")])
    assert report.exit_code == 0, report.output
    assert f"note: skipped {sweep / '1'}: failed: replay.mode must be one of" in report.output
    assert pl.read_csv(tmp_path / "r" / "comparison.csv").height == 2


def test_report_of_only_failed_runs_is_one_line(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)  # a run killed before it wrote its summary
    result = CliRunner().invoke(report_main, [str(run), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "skipped" in result.output and "no finished run to report" in result.output


def test_bare_help_loads_neither_hydra_nor_polars(tmp_path):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "replay.cli", "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not {"hydra", "polars", "pyarrow", "numpy", "engines"} & imported
    conf = Path(__file__).parents[1] / "conf"
    for group in ("cache", "engine", "hardware", "model", "pricing", "trace"):
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        line = next(ln for ln in result.stdout.splitlines() if ln.startswith(f"{group}: "))
        assert [o.strip("[]") for o in line.split(": ", 1)[1].split(", ")] == options
    assert "engine: [analytic]," in result.stdout and "load:" in result.stdout


def start_replay(tmp_path, *args):
    """`replay plots=false ARGS` in its own process group (``replaykit.start_cli``)."""
    return start_cli("replay", "plots=false", *args, cwd=tmp_path)


def read_until(proc, text):
    """stderr up to ``text`` (the progress bar is shown off a terminal too)."""
    seen = ""
    while text not in seen:
        char = proc.stderr.read(1)
        assert char, proc.communicate()
        seen += char
    return seen


def interrupted_run(tmp_path, proc, seen):
    """The run a Ctrl-C stopped: exit 130 said plainly, its summary and its calls."""
    out, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "[interrupted: partial results]" in out
    run_dir = next(tmp_path.glob("outputs/*/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] and summary["baseline"] == "off"  # no second simulation after Ctrl-C
    requests = pl.read_parquet(run_dir / "requests.parquet")
    assert requests.height == summary["calls"] <= summary["calls_sent"]
    assert requests["api_cost_usd"].null_count() == 0  # every finished call billed
    return summary, pl.read_parquet(run_dir / "trace.parquet").height


@pytest.mark.parametrize("bill_process", ["null", "0"])  # the API bill in the replay's process, or its own
def test_ctrl_c_during_a_replay_keeps_what_finished_and_exits_130(tmp_path, bill_process):
    proc = start_replay(tmp_path, "engine=offload", "trace.sessions=60",
                        f"replay.bill_process_min_calls={bill_process}")
    seen = read_until(proc, "replay:")  # the loop has begun
    time.sleep(1.0)  # some calls finish
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole foreground group
    summary, trace_calls = interrupted_run(tmp_path, proc, seen)
    assert summary["calls"] < trace_calls  # stopped early


def test_ctrl_c_in_the_no_reuse_baseline_keeps_the_whole_replay(tmp_path):
    proc = start_replay(tmp_path, "engine=offload", "trace.sessions=60")
    seen = read_until(proc, "no-reuse baseline:")  # the replay is over, the second simulation begun
    os.killpg(proc.pid, signal.SIGINT)
    summary, trace_calls = interrupted_run(tmp_path, proc, seen)
    assert summary["calls"] == summary["calls_sent"] == trace_calls


def test_ctrl_c_while_the_bill_process_finishes_keeps_the_whole_run(tmp_path):
    # The bill's process is stopped (SIGSTOP) from its start, so the replay, once over, waits
    # for it in close(); the press lands there. It must not lose the run: the bill is awaited,
    # the rest written, and the exit says it was interrupted. (Before, the run was lost.)
    proc = start_replay(tmp_path, "engine=analytic", "trace.sessions=5", "replay.bill_process_min_calls=0",
                        "replay.progress=false")
    deadline = time.monotonic() + 60
    children = wait_for(lambda: [int(p.name) for p in Path("/proc").iterdir()
                                 if p.name.isdigit() and _parent_pid(p) == proc.pid], proc, deadline, 0.01)
    os.kill(children[0], signal.SIGSTOP)
    try:
        def engine_rows_written():  # the replay is over: its engine rows are written
            rows = list(tmp_path.glob("outputs/*/*/.requests.engine.parquet"))
            return rows and _complete_parquet(rows[0])

        wait_for(engine_rows_written, proc, deadline, 0.05)
        time.sleep(0.5)  # into close(): the last events written, the bill awaited
        os.kill(proc.pid, signal.SIGINT)  # a terminal's press: the bill runs in a session of its own
        time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):  # (gone if the replay gave up on it)
            os.kill(children[0], signal.SIGCONT)
    summary, trace_calls = interrupted_run(tmp_path, proc, "")
    assert summary["calls"] == summary["calls_sent"] == trace_calls


def _parent_pid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _complete_parquet(path: Path) -> bool:
    try:
        pq.read_metadata(path)
        return True
    except (OSError, pa.ArrowInvalid):
        return False
