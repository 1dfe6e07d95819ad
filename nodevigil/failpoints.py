"""Named crash points for the fault-injection tests.

``NODEVIGIL_FAILPOINTS=outbox.before_send`` makes the process kill itself with SIGKILL the first
time it reaches that point, exactly as a power cut or the OOM killer would. Unset (always, in
production) a failpoint costs one set lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(filter(None, os.environ.get("NODEVIGIL_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    """Die here, without cleanup, when ``name`` is armed."""
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
