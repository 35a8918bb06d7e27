"""Ctrl-C during a replay. The first press asks the loop to stop at its next turn, so the hooks
of a finished call (its engine row, its bill) run whole or not at all; a second press stops at
once (an engine stuck waiting), except inside ``CtrlC.whole()`` (a message being written to the
bill's process), where it waits for the block's end. Outside the main thread, or where SIGINT
is ignored, nothing changes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class CtrlC:
    # blocks running whole (``whole``) and a second press waiting for their end: per process,
    # as signals are
    _whole_depth = 0
    _deferred = False

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None
        self._installed = False

    def start(self) -> CtrlC:
        """Catch SIGINT from now on (until ``stop``)."""
        # (SIGINT ignored, as under nohup or in a background job, stays ignored)
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def stop(self) -> None:
        """Put back the handler that was there before."""
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)

    @classmethod
    @contextmanager
    def whole(cls) -> Iterator[None]:
        """Run a block whole: a second press inside it stops at its end, not in its middle (a
        pickle half written to a pipe, or a batch written twice, would corrupt what reads it).
        A blocked write inside goes on after the press (the system call is retried)."""
        cls._whole_depth += 1
        try:
            yield
        finally:
            cls._whole_depth -= 1
            due = cls._deferred and not cls._whole_depth
            if due:  # (on an exception the press goes with it: it is not kept for a later block)
                cls._deferred = False
        if due:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            if CtrlC._whole_depth:
                CtrlC._deferred = True
                return
            raise KeyboardInterrupt
        self.pressed = True
