"""Running real programs on loopback: free ports, readiness polling, clean termination."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import dns.exception

from nodevigil.core.errors import NodevigilError

STARTUP_TIMEOUT = 15.0
# Words the programs print when a port was taken between our probe and their bind.
_PORT_TAKEN = ("address already in use", "cannot bind", "unable to bind", "eaddrinuse")
# Debian installs the servers in /usr/sbin, which is not on an ordinary user's PATH.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
T = TypeVar("T")


class ProgramError(NodevigilError, RuntimeError):
    """A program did not start or did not become ready; the message carries its log."""


class PortTaken(ProgramError):
    """The program lost the race for its ephemeral port; start again with new ports."""


def locate(name: str) -> Path | None:
    """The executable ``name`` on PATH, else in the sbin directories; None when absent."""
    found = shutil.which(name) or shutil.which(name, path=_SBIN)
    return Path(found) if found else None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a port free for both UDP and TCP, as a DNS server needs."""
    for _ in range(50):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise ProgramError("no port free for both UDP and TCP")


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
class Program:
    """A started program: its process and its log file (stdout and stderr)."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    def log_tail(self, limit: int = 3000) -> str:
        """The end of the program's log, for error messages."""
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


async def spawn(
    name: str, argv: list[str], log_path: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> Program:
    """Start ``argv`` in ``cwd`` with stdout and stderr appended to ``log_path`` (and ``env``
    added to this process's environment)."""
    log = await asyncio.to_thread(log_path.open, "ab")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
        )
    finally:
        log.close()
    return Program(name, process, log_path)


async def wait_ready(program: Program, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until ready; a program that exits or stays unready raises with its log."""

    async def ready_or_dead() -> bool:
        if not program.running:
            return True
        try:
            return await check()
        except (OSError, TimeoutError, aiohttp.ClientError, dns.exception.DNSException):
            return False

    try:
        await poll_until(ready_or_dead, within=STARTUP_TIMEOUT, what=f"{program.name} ready")
    except TimeoutError:
        await program.stop()
        tail = await asyncio.to_thread(program.log_tail)
        raise ProgramError(f"{program.name} did not become ready:\n{tail}") from None
    if not program.running:
        await program.process.wait()
        tail = await asyncio.to_thread(program.log_tail)
        error = PortTaken if any(w in tail.lower() for w in _PORT_TAKEN) else ProgramError
        raise error(f"{program.name} exited with {program.process.returncode}:\n{tail}")


async def start_with_retries(start: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
    """Call ``start`` again (with new ports) while the program loses its port race."""
    for attempt in range(attempts):
        try:
            return await start()
        except PortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
