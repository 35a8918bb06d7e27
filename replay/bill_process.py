"""The API bill in a second process, so billing stays off the simulation's path.

The replay sends the process each call's send time and, when it finishes, its first-token time
(a few numbers per call, in batches over a pipe). The process prepares the same calls from the
trace, expands their block lists itself and feeds the same events, in the same order, to the
same bill stream (``replay.billing``): the bill is the one the replay would make in-process,
byte for byte, made on another core. It runs in its own session (a Ctrl-C at the terminal
reaches only the replay, which then closes the bill over what finished) and exits when its
input ends, so a replay that dies leaves nothing running.

    python -m replay.bill_process   # started by BillProcess; reads pickles on stdin
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import polars as pl

from replay.billing import Biller
from replay.interrupt import CtrlC
from replay.runner import ReplayOptions

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class BillProcess:
    """The hooks of ``replay.billing.BillStream`` (``on_send``, ``on_finish``, ``close``), with the
    stream run by a child process. ``batch``: events per message."""

    def __init__(self, biller: Biller, path: str, opts: ReplayOptions, batch: int = 4096) -> None:
        root = str(Path(__file__).resolve().parents[1])  # the child imports this copy of the code
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-m", "replay.bill_process"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                      start_new_session=True)
        self._batch = batch
        self._events: list[tuple] = []
        self._write((biller, path, opts))

    def on_send(self, call: dict[str, Any], request: Any, t: float) -> None:
        self._add((call["row"], t))

    def on_finish(self, call: dict[str, Any], request: Any, done: Any) -> None:
        self._add((call["row"], request.arrival_s, done.first_token_s))

    def _add(self, event: tuple) -> None:
        self._events.append(event)
        if len(self._events) >= self._batch:
            self._flush()

    def close(self) -> pl.DataFrame:
        """The bill of what finished (as ``BillStream.close``)."""
        try:
            self._flush()
            self._write(None)
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.close()
            data = self._proc.stdout.read()
            if self._proc.wait() != 0:
                self._fail()
            return pickle.loads(data)
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the process if it still runs (the replay failed); nothing is billed."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass
        self._stderr.close()

    def _flush(self) -> None:
        with CtrlC.whole():  # a batch goes out whole and once, whatever Ctrl-C does meanwhile
            if self._events:
                events, self._events = self._events, []
                self._write(events)

    def _write(self, message: Any) -> None:
        assert self._proc.stdin is not None
        try:
            with CtrlC.whole():  # never half a message in the pipe: the process could not read on
                pickle.dump(message, self._proc.stdin, _PROTOCOL)
                self._proc.stdin.flush()
        except BrokenPipeError:
            self._proc.wait()
            self._fail()

    def _fail(self) -> None:
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"the bill process (replay/bill_process.py) exited with code "
                           f"{self._proc.returncode}: " + (" | ".join(tail) or "no message"))


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The child's side: read the set-up and the event batches, write the bill."""
    from replay.runner import expandable_calls

    biller, path, opts = pickle.load(inp)
    _, expander, rows = expandable_calls(path, opts, biller.block_size)
    index = {call["row"]: i for i, call in enumerate(rows)}
    stream = biller.stream()
    prompts: dict[int, Any] = {}  # the block lists of calls sent and not yet finished
    while (events := pickle.load(inp)) is not None:
        for event in events:
            row = event[0]
            i = index[row]
            if len(event) == 2:  # sent: expanded now, in the replay's send order (parents first)
                prompts[row] = expander.expand_call(i, rows[i])[0]
                stream.sent(row, event[1])
            else:
                stream.finished(rows[i], row, event[1], event[2], prompts.pop(row))
    pickle.dump(stream.close(), out, _PROTOCOL)
    out.flush()


def main() -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # the bill is the only thing written to stdout
    try:
        serve(sys.stdin.buffer, out)
    except EOFError:  # the replay went away without closing the bill
        sys.exit(1)
    sys.stderr.flush()
    os._exit(0)  # the bill is written: skip the interpreter's teardown (~0.14 s the replay waits out)


if __name__ == "__main__":
    main()
