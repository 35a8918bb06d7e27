"""The replay app end to end: reuse against the ideal, sweeps, bad input, interruption."""

import json
import os
import signal
import time

import polars as pl
import pytest
from replaykit import compose_cfg, run_cli

from engines.analytic import AnalyticEngine
from replay.app import build_engine, run
from replay.interrupt import CtrlC
from replay.runner import ReplayOptions, replay
from traces.stats import inspect
from traces.synth import generate, load_config

INFINITE = ["cache=hbm_only", "cache.tiers.0.capacity_bytes=inf"]


@pytest.fixture(scope="module")
def coding_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "coding.parquet"
    generate(load_config("coding_agent", ["sessions=12", "seed=2", "subagent.probability=0.1"]), path)
    return path


@pytest.mark.parametrize("generator", ["coding_agent", "email_drafting"])
def test_infinite_cache_reuse_equals_the_ideal_exactly(tmp_path, generator):
    path = tmp_path / "t.parquet"
    generate(load_config(generator, ["sessions=15", "seed=4"]), path)
    summary = run(compose_cfg([*INFINITE, "trace=file", f"trace.path={path}"]), tmp_path)
    ideal = inspect(path)
    assert summary["reuse"] == ideal["ideal_reuse"]
    assert summary["calls"] == ideal["requests"]


def test_a_small_hbm_reuses_less_and_lower_tiers_win_it_back(tmp_path, coding_trace):
    small = ["cache.tiers.0.capacity_bytes=2e10", "parallel.tp=8", "engine.concurrency=32",
             "replay.session_rate_per_s=1"]
    results = {}
    for name in ("hbm_only", "hbm_dram"):
        out = tmp_path / name
        out.mkdir()
        results[name] = run(compose_cfg([f"cache={name}", *small, "trace=file",
                                         f"trace.path={coding_trace}"]), out)
    assert results["hbm_only"]["reuse"] < results["hbm_dram"]["reuse"]
    assert results["hbm_dram"]["reuse_by_tier"]["dram"] > 0
    assert results["hbm_only"]["gpu_s"] > results["hbm_dram"]["gpu_s"]


def test_open_mode_limit_sample_and_time_scale(tmp_path, coding_trace):
    cfg = compose_cfg(["replay.mode=open", "replay.limit=50", "trace=file", f"trace.path={coding_trace}"])
    assert run(cfg, tmp_path)["calls"] == 50
    cfg = compose_cfg(["replay.sample.sessions=3", "trace=file", f"trace.path={coding_trace}"])
    sub = tmp_path / "s"
    sub.mkdir()
    assert run(cfg, sub)["sessions"] == 3
    full = pl.read_parquet(coding_trace)
    base = tmp_path / "b"
    fast = tmp_path / "f"
    base.mkdir(), fast.mkdir()
    run(compose_cfg(["replay.mode=open", "trace=file", f"trace.path={coding_trace}"]), base)
    run(compose_cfg(["replay.mode=open", "replay.time_scale=0.5", "trace=file",
                     f"trace.path={coding_trace}"]), fast)
    a = pl.read_parquet(base / "requests.parquet").sort("request_id")["arrival_s"]
    b = pl.read_parquet(fast / "requests.parquet").sort("request_id")["arrival_s"]
    assert (b - a * 0.5).abs().max() < 1e-6 and len(a) == full.height


def test_the_progress_bars_name_each_simulation(tmp_path, coding_trace, capsys):
    run(compose_cfg(["replay.progress=true", "trace=file", f"trace.path={coding_trace}"]), tmp_path)
    err = capsys.readouterr().err
    assert "replay: 100%" in err and "no-reuse baseline: 100%" in err  # the second run says what it is


def test_ctrl_c_keeps_what_finished(tmp_path, coding_trace):
    cfg = compose_cfg([])
    engine = build_engine(cfg, 64)
    assert isinstance(engine, AnalyticEngine)
    finished = []

    def on_finish(call, request, done):
        if len(finished) == 5:
            raise KeyboardInterrupt
        finished.append(done.request_id)

    result = replay(str(coding_trace), engine, ReplayOptions(progress=False), lambda *a: None, on_finish)
    assert result.interrupted and result.finished == 5 and len(finished) == 5


def test_a_real_ctrl_c_lets_every_finished_call_record_whole(coding_trace):
    engine = build_engine(compose_cfg([]), 64)
    rows, bills = [], []

    def on_finish(call, request, done):  # two records per call, as the engine row and the bill
        rows.append(done.request_id)
        if len(rows) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # lands here, between the two records
        bills.append(done.request_id)

    before = signal.getsignal(signal.SIGINT)
    result = replay(str(coding_trace), engine, ReplayOptions(progress=False), None, on_finish)
    assert result.interrupted and result.finished == len(rows) == len(bills) >= 5 and rows == bills
    assert result.finished < pl.read_parquet(coding_trace).height
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_a_second_ctrl_c_stops_at_once():
    ctrl_c = CtrlC().start()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert ctrl_c.pressed
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode: never gets past here
    finally:
        ctrl_c.stop()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_press_deferred_in_a_block_that_fails_goes_with_its_exception():
    ctrl_c = CtrlC().start()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first press
        with pytest.raises(BrokenPipeError):
            with CtrlC.whole():
                os.kill(os.getpid(), signal.SIGINT)  # deferred to the block's end
                time.sleep(0.05)
                raise BrokenPipeError  # the block fails: its error goes on, not the press
        with CtrlC.whole():  # a later block is not interrupted by the old press
            pass
    finally:
        ctrl_c.stop()


def test_a_second_ctrl_c_inside_a_whole_block_stops_at_its_end():
    ctrl_c = CtrlC().start()
    ran = []
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first press: the loop's flag
        with pytest.raises(KeyboardInterrupt):
            with CtrlC.whole():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run by now, and not raised
                ran.append("the rest of the block")
        assert ran == ["the rest of the block"]
    finally:
        ctrl_c.stop()


def test_an_ignored_ctrl_c_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        ctrl_c = CtrlC().start()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        ctrl_c.stop()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_default_replay_prints_the_table_and_writes_outputs(tmp_path):
    result = run_cli("replay", "trace.sessions=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TTFT p50" in result.stdout and "API $ / session" in result.stdout
    run_dir = next(tmp_path.glob("outputs/*/*"))
    written = {p.name for p in run_dir.iterdir()}
    assert {"requests.parquet", "summary.json", "trace.parquet", ".hydra"} <= written
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["calls"] == pl.read_parquet(run_dir / "requests.parquet").height > 0


def test_joblib_sweep_writes_one_comparison_table(tmp_path):
    result = run_cli("replay", "-m", "cache=hbm_only,hbm_dram", "trace.sessions=3", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    comparison = next(tmp_path.glob("multirun/*/*/comparison.csv"))
    table = pl.read_csv(comparison)
    assert table.height == 2 and set(table["overrides"]) == {
        "cache=hbm_only trace.sessions=3", "cache=hbm_dram trace.sessions=3"}
    for run_dir, reuse in zip(sorted(comparison.parent.glob("[0-9]")), table["reuse"], strict=True):
        assert json.loads((run_dir / "summary.json").read_text())["reuse"] == pytest.approx(reuse)


@pytest.mark.parametrize("args,message", [
    (["trace=file", "trace.path=/no/such/trace.parquet"], "/no/such/trace.parquet: no such file"),
    (["model=llama9"], "Could not find 'model/llama9'"),
    (["trace.sessions=2", "replay.mode=sideways"], "replay.mode must be one of open, closed"),
    (["trace.sessions=2", "replay.baseline=maybe"], "replay.baseline must be one of simulate, off"),
    (["trace.sessions=2", "replay.bill_process_min_calls=many"],
     "replay.bill_process_min_calls must be null or an integer >= 0, got 'many'"),
    (["trace.sessions=2", "replay.bill_process_min_calls=-1"],
     "replay.bill_process_min_calls must be null or an integer >= 0, got -1"),
    (["trace.sessions=2", "model=llama3_1_70b", "parallel.tp=1"], "does not fit on 1 x h100_sxm"),
    (["trace.sessions=2", "trace.arrival.process=sometimes"], "arrival.process must be"),
    (["trace.sessions=2", "engine.block_size=100"], "must be a multiple of the trace's block size"),
    (["trace.sessions=2", "cache.eviction_headroom=1.5"],
     "cache.eviction_headroom must be in [0, 1), got 1.5"),
    (["trace.sessions=2", "engine=offload", "cache.eviction_headroom=-0.1"],
     "cache.eviction_headroom must be in [0, 1), got -0.1"),
    (["trace.sessions=2", "pricing.self_hosted.storage_billing.dram=sometimes"],
     "pricing.self_hosted.storage_billing.dram must be one of capacity, held, got 'sometimes'"),
    (["trace.sessions=2", "pricing.self_hosted.storage_billing=capacity"],
     "pricing.self_hosted.storage_billing must map tier names to capacity or held, got 'capacity'"),
    (["trace.sessions=2", "+pricing.self_hosted.storage_billing.nvmee=held"],  # misspelt: nvme stays bought
     "pricing.self_hosted.storage_billing.nvmee: no tier 'nvmee' in storage_usd_per_tb_month (hbm, dram, "
     "nvme, warehouse)"),
    (["trace.sessions=2", "cache.eviction=ttl_pin", "engine.eviction_params.ttl_s=null"],
     "eviction policy ttl_pin needs engine.eviction_params.ttl_s"),
    (["trace.sessions=2", "+cache.tiers.1.latency=1e-4"],  # a typo would leave latency_s at 0
     "cache hbm_dram tier dram: unknown key 'latency' (known: name, capacity_bytes, "),
    (["trace.sessions=2", "+hardware.overhead=0.001"], "hardware h100_sxm: unknown key 'overhead' (known: "),
    (["trace.sessions=2", "+hardware.efficiency.flop=0.5"],
     "hardware h100_sxm efficiency: unknown key 'flop' (known: flops, hbm, link, attention, collective)"),
    (["trace.sessions=2", "+model.kv_dtyp=fp8"], "model llama3_1_70b: unknown key 'kv_dtyp' (known: "),
    (["trace.sessions=2", "+cache.evict=ttl_pin"], "cache hbm_dram: unknown key 'evict' (known: name, "),
    (["trace.sessions=2", "cache.eviction=ttl_pin", "engine.eviction_params.ttl_s=abc"],
     "engine.eviction_params.ttl_s must be a number, got 'abc'"),
    (["trace.sessions=2", "+engine.eviction_params.ttl=5"],  # misspelt: ttl_s would stay at 30
     "engine.eviction_params.ttl: unknown (known: shared_bonus_s, ttl_s)"),
    (["trace.sessions=2", "engine=offload", "deployment=pd", "cache.eviction=ttl_pin",
      "engine.eviction_params.ttl_s=null"], "eviction policy ttl_pin needs engine.eviction_params.ttl_s"),
    (["trace.sessions=2", "engine=torch", "model=tiny", "hardware=cpu", "parallel.tp=1",
      "+cache.evict=ttl_pin"], "cache hbm_dram: unknown key 'evict' (known: name, "),
    (["trace.sessions=2", "engine=offload", "deployment=pd", "+deployment.decode.gpus=2"],
     "deployment.decode: unknown key 'gpus' (known: hardware, tp, count, gpu_hour_usd)"),
    (["trace.sessions=2", "engine=offload", "deployment=pd", "+deployment.link.latency=1"],
     "deployment.link: unknown key 'latency' (known: nic_bw, efficiency, latency_s, layerwise_overlap)"),
    (["trace.sessions=2", "cache.tiers.1.name=cxl"],  # an unpriced tier would be stored for free
     "cache tier 'cxl' has no price: set pricing.self_hosted.storage_usd_per_tb_month.cxl"),
    (["trace.sessions=2", "engine=offload", "cache.tiers.1.name=cxl"],
     "cache tier 'cxl' has no price: set pricing.self_hosted.storage_usd_per_tb_month.cxl"),
])
def test_bad_input_gets_a_clear_line_not_a_traceback(tmp_path, args, message):
    result = run_cli("replay", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("engine", ["analytic", "offload"])
def test_same_config_same_bytes(tmp_path, coding_trace, engine):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        run(compose_cfg([f"engine={engine}", "trace=file", f"trace.path={coding_trace}", "plots=false"]), out)
        outs.append(((out / "requests.parquet").read_bytes(), (out / "summary.json").read_bytes()))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("engine", ["analytic", "offload"])
def test_engine_blocks_larger_than_the_traces(tmp_path, coding_trace, engine):
    """Blocks of 128 (every second chained hash): coarser blocks reuse a little less, never more."""
    reuse = {}
    for bs in (64, 128):
        out = tmp_path / str(bs)
        out.mkdir()
        reuse[bs] = run(compose_cfg([f"engine={engine}", f"engine.block_size={bs}", "plots=false",
                                     "trace=file", f"trace.path={coding_trace}"]), out)["reuse"]
    assert 0.9 < reuse[128] < reuse[64]


@pytest.mark.parametrize("engine", ["analytic", "offload"])
def test_same_config_and_seed_give_byte_identical_outputs(tmp_path, coding_trace, engine):
    overrides = [f"engine={engine}", "cache=hbm_dram", "cache.tiers.0.capacity_bytes=2e11",
                 "replay.session_rate_per_s=0.5", "trace=file", f"trace.path={coding_trace}", "plots=false"]
    outputs = []
    for name in ("one", "two"):
        out = tmp_path / name
        out.mkdir()
        run(compose_cfg(overrides), out)
        outputs.append({f: (out / f).read_bytes() for f in ("requests.parquet", "summary.json")})
    assert outputs[0] == outputs[1]
    calls = pl.read_parquet(coding_trace).height
    assert pl.read_parquet(tmp_path / "one" / "requests.parquet").height == calls


def test_a_broken_parent_link_is_one_line_not_lost_calls(tmp_path):
    # a-1 continues a-0, which is not in the trace: closed mode used to drop it and every call
    # after it silently (132 of 375 calls in the case)
    from tracekit import row, write

    path = write(tmp_path / "t.parquet", [row("a", 0, 12, [1, 2, 3]),
                                          row("a", 2, 16, [4], parent="a-1", kept=3)])
    result = run_cli("replay", "trace=file", f"trace.path={path}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not replayed, the trace is invalid: " in result.stderr
    # the first of its two problems (turn 2 in a 2-call session; parent a-1 not in the file)
    assert "row 1 (request_id a-2): turn: turn 2 outside 0..1 (the session has 2 calls) (and 1 more)" \
        in result.stderr
