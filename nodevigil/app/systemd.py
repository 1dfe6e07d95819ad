"""sd_notify without libsystemd: readiness, status, and a watchdog fed only while healthy.

The protocol (sd_notify(3)): newline-separated ``KEY=VALUE`` fields in one datagram sent to the
unix socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names an abstract socket. Outside
systemd the variable is unset and every call is a no-op returning False.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock: (newer systemd, for VMs); not needed on an ops host


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields to systemd; True when the datagram was sent."""
    for field in fields:
        if "\n" in field or "=" not in field:
            raise ValueError(f"not a KEY=VALUE field on one line: {field!r}")
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not fields:
        return False
    address = _address(target)
    if address is None:
        return False
    payload = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # never stall the event loop on a full receive queue
            sock.sendto(payload, address)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", target, exc)
        return False
    return True


def status(text: str) -> bool:
    """Set the one-line status ``systemctl status`` shows."""
    return notify("STATUS=" + " ".join(text.split()))


def ready(status_text: str | None = None) -> bool:
    """Tell systemd start-up is complete (``READY=1``), optionally with a status line."""
    extra = [] if status_text is None else ["STATUS=" + " ".join(status_text.split())]
    return notify("READY=1", *extra)


def reloading() -> bool:
    """Tell systemd a configuration reload has begun; send ``ready()`` when it is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    """Tell systemd the daemon is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``; None when not for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # meant for another process (we were forked or exec'd by it)
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


async def feed_watchdog(
    healthy: Callable[[], bool],
    interval: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval / 2`` while ``healthy()`` holds, until cancelled.

    ``interval`` is the watchdog timeout (``watchdog_interval()``). A wedged controller stops
    feeding, so systemd kills and restarts the daemon; a stalled event loop stops feeding by
    itself. A change of health is logged once, and once on recovery.
    """
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, not {interval}")
    was_healthy = True
    while True:
        try:
            now_healthy = bool(healthy())
        except Exception:
            log.exception("watchdog health check raised; treating as unhealthy")
            now_healthy = False
        if now_healthy:
            notify("WATCHDOG=1")
        if now_healthy != was_healthy:
            if now_healthy:
                log.info("healthy again: feeding the systemd watchdog")
            else:
                log.error("unhealthy: no longer feeding the systemd watchdog (restart expected)")
            was_healthy = now_healthy
        await sleep(interval / 2)
