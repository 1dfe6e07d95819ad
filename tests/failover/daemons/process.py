"""Running real programs for tests: re-exported from ``nodevigil.app.demo.servers.process``."""

from nodevigil.app.demo.servers.process import (
    STARTUP_TIMEOUT,
    PortTaken,
    free_port,
    free_udp_tcp_port,
    poll_until,
    spawn,
    start_with_retries,
    wait_ready,
)
from nodevigil.app.demo.servers.process import Program as Daemon
from nodevigil.app.demo.servers.process import ProgramError as DaemonError

__all__ = [
    "STARTUP_TIMEOUT",
    "Daemon",
    "DaemonError",
    "PortTaken",
    "free_port",
    "free_udp_tcp_port",
    "poll_until",
    "spawn",
    "start_with_retries",
    "wait_ready",
]
