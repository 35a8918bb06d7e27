"""Ctrl-C during a replay. The first press asks the loop to stop at its next turn, so the hooks
of a finished call (its engine row, its bill) run whole or not at all; a second press stops at
once (an engine stuck waiting). Outside the main thread, or where SIGINT is ignored, nothing
changes."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class CtrlC:
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

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
