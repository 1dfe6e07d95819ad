"""Named crash points for the fault-injection tests.

``NODEVIGIL_FAILPOINTS=outbox.before_send`` makes the process kill itself with SIGKILL the first
time it reaches that point, exactly as a power cut or the OOM killer would. Unset (always, in
production) a failpoint costs one set lookup.

Points: ``outbox.before_send``, ``outbox.after_send``, ``incident.opened``,
``controller.before_apply`` (a decision with actions, its bookkeeping saved, nothing sent to a
load balancer yet) and ``controller.after_apply`` (the actions applied, not yet published or
written to the action log).
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(filter(None, os.environ.get("NODEVIGIL_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    """Die here, without cleanup, when ``name`` is armed."""
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
