"""Running real programs for tests: free ports, readiness polling, clean termination."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import dns.exception

STARTUP_TIMEOUT = 15.0
# Words the daemons print when a port was taken between our probe and their bind.
_PORT_TAKEN = ("address already in use", "cannot bind", "unable to bind", "eaddrinuse")
T = TypeVar("T")


class DaemonError(RuntimeError):
    """A daemon did not start or did not become ready; the message carries its log."""


class PortTaken(DaemonError):
    """The daemon lost the race for its ephemeral port; start again with new ports."""


def free_port() -> int:
    """Return a TCP port that was free a moment ago (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_tcp_port() -> int:
    """Return a port free for both UDP and TCP, as a DNS server needs."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise DaemonError("no port free for both UDP and TCP")


async def poll_until(
    check: Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.02, what: str
) -> None:
    """Await ``check()`` until it is true, or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {within:g}s")
        await asyncio.sleep(interval)


@dataclass
class Daemon:
    """A started program: its process and its log file (stdout and stderr)."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    def log_tail(self, limit: int = 3000) -> str:
        """The end of the daemon's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process.returncode is None

    async def stop(self) -> None:
        """Terminate the process, killing it when it does not exit within 5 s."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            async with asyncio.timeout(5):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def spawn(name: str, argv: list[str], log_path: Path, cwd: Path) -> Daemon:
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd
        )
    return Daemon(name, process, log_path)


async def wait_ready(daemon: Daemon, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until ready; a daemon that exits or stays unready raises with its log."""

    async def ready_or_dead() -> bool:
        if not daemon.running:
            return True
        try:
            return await check()
        except (OSError, TimeoutError, aiohttp.ClientError, dns.exception.DNSException):
            return False

    try:
        await poll_until(ready_or_dead, within=STARTUP_TIMEOUT, what=f"{daemon.name} ready")
    except TimeoutError:
        await daemon.stop()
        raise DaemonError(f"{daemon.name} did not become ready:\n{daemon.log_tail()}") from None
    if not daemon.running:
        await daemon.process.wait()
        tail = daemon.log_tail()
        error = PortTaken if any(w in tail.lower() for w in _PORT_TAKEN) else DaemonError
        raise error(f"{daemon.name} exited with {daemon.process.returncode}:\n{tail}")


async def start_with_retries(start: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
    for attempt in range(attempts):
        try:
            return await start()
        except PortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
