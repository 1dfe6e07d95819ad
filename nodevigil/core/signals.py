"""Signals that arrive before the event loop can take them (kernel: imports nothing of ours)."""

from __future__ import annotations

import os
import signal
from types import FrameType


class EarlySignals:
    """Catches SIGHUP, SIGTERM and SIGINT from the first line of the ``nodevigil`` command until
    the event loop's handlers take over.

    Importing the daemon and reading a large configuration takes a second or more; a SIGHUP in
    that window would end the process (its default action) and a SIGTERM would end it halfway.
    Caught here, ``nodevigil run`` acts on them once it has started (a reload, or a clean stop);
    every other command gets them back with ``release()``.
    """

    SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.hup = False
        self.stop = False
        self._caught: list[int] = []
        self._previous = {sig: signal.signal(sig, self._catch) for sig in self.SIGNALS}

    def _catch(self, signum: int, frame: FrameType | None) -> None:
        self._caught.append(signum)
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stop = True

    def release(self) -> None:
        """Restore the previous handlers and deliver again what was caught meanwhile."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        for signum in dict.fromkeys(self._caught):
            os.kill(os.getpid(), signum)
        self._caught.clear()
