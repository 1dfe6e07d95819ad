"""Small helpers shared by the benchmarks: a light HTTP target, child processes, CPU and medians.

The target server is deliberately not aiohttp: a minimal asyncio HTTP/1.1 responder costs a
fraction of a framework per request, so on a 2-core machine it leaves the CPU to the probers
being measured. It answers every request with ``200 ok``, keeps connections alive unless the
client asks to close, and runs as ``python bench/common.py target --ports N`` in its own
process (printing its ports as one JSON line) until its stdin closes or ``--max-seconds`` pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\nok"
)
_MAX_BUFFER = 64 * 1024  # a request head is tiny; never buffer a misbehaving client's stream
TARGET_LIFETIME = 1800.0  # the target always stops by itself, even if the parent is killed -9


# --- the target server -----------------------------------------------------------------------


class _Responder(asyncio.Protocol):
    """Answers every request head on the connection with RESPONSE (pipelining included)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer + data
        heads = buffer.count(b"\r\n\r\n")
        if not heads:
            self._buffer = buffer[-_MAX_BUFFER:]
            return
        end = buffer.rfind(b"\r\n\r\n") + 4
        self._transport.write(self._answer() * heads)
        self._buffer = buffer[end:]
        if b"connection: close" in buffer[:end].lower():
            self._transport.close()

    def _answer(self) -> bytes:
        return RESPONSE

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def _serve_targets(ports: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(_Responder, LOOPBACK, 0, backlog=4096, reuse_address=True)
        for _ in range(ports)
    ]
    bound = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps({"ports": bound}), flush=True)
    # The parent holds our stdin; EOF means it is gone (or done with us): stop then.
    stdin_closed = loop.create_future()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()
        stdin_closed.set_result(None)

    watcher = asyncio.create_task(watch_stdin())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin_closed, max_seconds)
    watcher.cancel()
    for server in servers:
        server.close()


FAILING = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
    b"Connection: keep-alive\r\n\r\nsick"
)


class _SwitchableResponder(_Responder):
    """Like _Responder, but answers 503 while its port's switch says failing."""

    def __init__(self, failing: list[bool]) -> None:
        super().__init__()
        self._failing = failing

    def _answer(self) -> bytes:
        return FAILING if self._failing[0] else RESPONSE


async def _serve_switchable(ports: int, max_seconds: float, host: str = LOOPBACK) -> None:
    """Serve ``ports`` ports; stdin lines ``fail P...`` / ``ok P...`` switch ports, each
    acknowledged with one JSON line carrying the wall time the switch took effect."""
    loop = asyncio.get_running_loop()
    switches: dict[int, list[bool]] = {}
    servers = []
    for _ in range(ports):
        failing = [False]
        server = await loop.create_server(
            functools.partial(_SwitchableResponder, failing), host, 0, backlog=1024
        )
        switches[server.sockets[0].getsockname()[1]] = failing
        servers.append(server)
    print(json.dumps({"ports": list(switches)}), flush=True)
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop_at = loop.time() + max_seconds
    try:
        while loop.time() < stop_at:
            try:
                async with asyncio.timeout(max(stop_at - loop.time(), 0.0)):
                    line = await reader.readline()
            except TimeoutError:
                break
            if not line:
                break  # the parent is gone or done with us
            word, *numbers = line.split()
            failing = word == b"fail"
            for number in numbers:
                switch = switches.get(int(number))
                if switch is not None:
                    switch[0] = failing
            print(json.dumps({"at": time.time(), "switched": len(numbers)}), flush=True)
    finally:
        for server in servers:
            server.close()


def start_switchable_targets(ports: int, host: str = LOOPBACK) -> Child:
    """The light target on ``ports`` ports of ``host`` (any 127.x.y.z: each address has its
    own ports, so fleets beyond the ephemeral port range fit on several) whose answers the
    parent can switch to 503."""
    command = [sys.executable, str(Path(__file__).resolve()), "switchable", "--ports", str(ports)]
    return spawn_json([*command, "--host", host], timeout=300.0)


def raise_fd_limit_to(wanted: int) -> int:
    """Lift the open-files limit to ``wanted`` (the hard limit too, when we may); return it."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    raise_fd_limit()
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: probers keep many sockets open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    """A child process that announced itself with one JSON line on stdout."""

    process: subprocess.Popen[str]
    hello: dict[str, Any]

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Close its stdin (its signal to stop), then terminate it if it lingers."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn_json(args: Sequence[str], *, timeout: float = 60.0) -> Child:
    """Start ``args`` and wait for the first stdout line, a JSON object."""
    process = subprocess.Popen(
        list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None
    line = _readline(process, timeout)
    return Child(process, json.loads(line))


def run_json(args: Sequence[str], *, timeout: float) -> dict[str, Any]:
    """Run ``args`` to completion and return the JSON object on the last line of its stdout."""
    done = subprocess.run(
        list(args),
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[1:3]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return dict(json.loads(lines[-1]))


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    # A blocking readline in a helper thread, so a child that never speaks cannot hang us.
    import concurrent.futures

    assert process.stdout is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(process.stdout.readline)
        try:
            line = future.result(timeout)
        except concurrent.futures.TimeoutError:
            process.kill()
            raise
    if not line:
        process.wait()
        raise RuntimeError(f"{process.args!r} exited ({process.returncode}) before saying hello")
    return line


def start_targets(ports: int) -> Child:
    """The light HTTP target server in its own process, listening on ``ports`` ephemeral ports."""
    return spawn_json(
        [sys.executable, str(Path(__file__).resolve()), "target", "--ports", str(ports)]
    )


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago (for programs that need a number)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# --- measurement -----------------------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds of process ``pid`` (this process when None), all threads."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of process ``pid`` in MiB."""
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process below this one (a server that
    ``tests/postgres_server.py`` started: postmaster, backends, WAL writer, ...)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "postgres":
                times = child.cpu_times()
                total += float(times.user + times.system)
        except psutil.Error:
            pass  # a process that ended meanwhile
    return total


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values (a failed round must not hide the others)."""
    return statistics.median(values) if values else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank, NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    """Entry point of the helper processes (``target`` and ``switchable``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    target = sub.add_parser("target", help="serve 200 ok on loopback ports until stdin closes")
    target.add_argument("--ports", type=int, default=1)
    target.add_argument("--max-seconds", type=float, default=TARGET_LIFETIME)
    switchable = sub.add_parser("switchable", help="like target; stdin switches ports to 503")
    switchable.add_argument("--ports", type=int, default=1)
    switchable.add_argument("--max-seconds", type=float, default=TARGET_LIFETIME)
    switchable.add_argument("--host", default=LOOPBACK, help="a loopback address to serve on")
    args = parser.parse_args()
    raise_fd_limit()
    if args.role == "target":
        asyncio.run(_serve_targets(args.ports, args.max_seconds))
    elif args.role == "switchable":
        raise_fd_limit_to(4 * args.ports + 1024)  # listeners, connections, hedged extras
        asyncio.run(_serve_switchable(args.ports, args.max_seconds, args.host))


if __name__ == "__main__":
    main()
