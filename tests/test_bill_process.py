"""The API bill in a second process: the same bill as in-process, and a clear error (never a
hang or a stray process) when that process dies."""

import array
import fcntl
import os
import signal
import termios
import threading
import time

import polars as pl
import pytest
from replaykit import compose_cfg

from replay.api_cache import ApiPricing, ModelPrices
from replay.app import build_engine, open_bill, run
from replay.bill_process import BillProcess
from replay.billing import Biller, BillStream
from replay.runner import ReplayOptions, replay
from traces.synth import generate, load_config


@pytest.fixture(scope="module")
def fanout_trace(tmp_path_factory):
    """Sessions with subagent fan-out (concurrent calls that must not read each other)."""
    path = tmp_path_factory.mktemp("trace") / "coding.parquet"
    generate(load_config("coding_agent", ["sessions=10", "seed=5", "subagent.probability=0.3"]), path)
    return path


def biller(cfg) -> Biller:
    return Biller(ApiPricing.from_cfg(cfg.pricing.api), ModelPrices(cfg.pricing.get("models") or {}), 64)


def bill_of(trace, stream, cfg, opts) -> pl.DataFrame:
    replay(str(trace), build_engine(cfg, 64), opts, stream.on_send,
           lambda call, request, done: stream.on_finish(call, request, done))
    return stream.close()


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_the_second_process_bills_exactly_what_the_stream_bills(fanout_trace, mode):
    cfg = compose_cfg(["pricing=anthropic_opus_4_5"])
    opts = ReplayOptions(mode=mode, time_scale=0.2, progress=False)
    here = bill_of(fanout_trace, BillStream(biller(cfg)), cfg, opts)
    there = bill_of(fanout_trace, BillProcess(biller(cfg), str(fanout_trace), opts, batch=7), cfg, opts)
    assert here.height == pl.read_parquet(fanout_trace).height and here["api_cached_tokens"].sum() > 0
    assert there.equals(here)


def test_the_threshold_picks_the_process_and_the_run_is_the_same(tmp_path, fanout_trace):
    rows = pl.read_parquet(fanout_trace).height
    outputs = {}
    for threshold in ("null", str(rows), str(rows + 1)):
        cfg = compose_cfg(["trace=file", f"trace.path={fanout_trace}", "plots=false",
                           f"replay.bill_process_min_calls={threshold}"])
        stream = open_bill(cfg, biller(cfg), str(fanout_trace), ReplayOptions(progress=False))
        stream.abort()
        assert isinstance(stream, BillProcess) == (threshold == str(rows))
        out = tmp_path / f"t{threshold}"
        out.mkdir()
        run(cfg, out)
        outputs[threshold] = pl.read_parquet(out / "requests.parquet")
    assert outputs[str(rows)].equals(outputs["null"]) and outputs["null"].equals(outputs[str(rows + 1)])


def test_a_dead_bill_process_is_an_error_that_says_so(fanout_trace):
    cfg = compose_cfg([])
    stream = BillProcess(biller(cfg), str(fanout_trace), ReplayOptions(progress=False), batch=1)
    stream._proc.kill()
    stream._proc.wait()
    with pytest.raises(RuntimeError, match=r"the bill process .* exited with code -9"):
        bill_of(fanout_trace, stream, cfg, ReplayOptions(progress=False))
    assert stream._proc.poll() is not None


def test_abort_stops_the_process(fanout_trace):
    cfg = compose_cfg([])
    stream = BillProcess(biller(cfg), str(fanout_trace), ReplayOptions(progress=False))
    stream.abort()
    assert stream._proc.poll() is not None
    stream.abort()  # twice is harmless


def test_a_second_ctrl_c_in_a_blocked_write_keeps_the_bill_whole(tmp_path):
    """The bill process lags (here: stopped) until the replay blocks writing to it, and both
    presses of a double Ctrl-C land in that write. The replay stops with the bill the stream
    in this process makes from the same hooks: no batch cut in half, none sent twice."""
    trace = tmp_path / "t.parquet"
    generate(load_config("coding_agent", ["sessions=30", "seed=5"]), trace)
    cfg = compose_cfg(["pricing=anthropic_opus_4_5"])
    opts = ReplayOptions(time_scale=0.2, progress=False)
    here, there = BillStream(biller(cfg)), BillProcess(biller(cfg), str(trace), opts, batch=7)
    child, main = there._proc.pid, threading.main_thread().ident
    os.kill(child, signal.SIGSTOP)

    def press_twice_once_the_pipe_is_full():
        queued, deadline = array.array("i", [0]), time.monotonic() + 60
        while queued[0] < 32768 and time.monotonic() < deadline:
            fcntl.ioctl(there._proc.stdin.fileno(), termios.FIONREAD, queued)
            time.sleep(0.05)
        time.sleep(0.5)  # the replay fills the rest and blocks
        for _ in range(2):
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.2)
        os.kill(child, signal.SIGCONT)

    def send(call, request, t):
        here.on_send(call, request, t)
        there.on_send(call, request, t)

    def finish(call, request, done):
        here.on_finish(call, request, done)
        there.on_finish(call, request, done)

    presser = threading.Thread(target=press_twice_once_the_pipe_is_full)
    presser.start()
    try:
        result = replay(str(trace), build_engine(cfg, 64), opts, send, finish)
    finally:
        presser.join()
        os.kill(child, signal.SIGCONT)
    assert result.interrupted and 0 < result.finished < pl.read_parquet(trace).height
    assert there.close().equals(here.close())
