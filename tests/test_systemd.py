"""sd_notify against real unix datagram sockets: a path in tmp_path and an abstract one."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodevigil.app import systemd
from tests.failover.daemons import poll_until

DEADLINE = 5.0


class Receiver:
    """The systemd end: a bound datagram socket and the messages that arrived on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def next(self, within: float = DEADLINE) -> str:
        """The next datagram, waiting at most ``within`` seconds."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            data = await loop.sock_recv(self.sock, 4096)
        return data.decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture(params=["path", "abstract"])
def receiver(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Receiver]:
    """A notify socket bound like systemd binds it, with ``$NOTIFY_SOCKET`` pointing at it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if request.param == "path":
        path = tmp_path / "notify"
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    else:
        name = f"nodevigil-test-{secrets.token_hex(8)}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    with sock:
        yield Receiver(sock)


def test_notify_without_a_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.status("starting") is False


def test_notify_to_a_socket_nobody_listens_on_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert systemd.notify("READY=1") is False


def test_a_field_with_a_newline_is_refused(receiver: Receiver) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        systemd.notify("STATUS=one\nREADY=1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        systemd.notify("READY")
    assert receiver.pending() == []


async def test_ready_status_and_stopping_arrive(receiver: Receiver) -> None:
    assert systemd.ready("3 nodes, 1 site") is True
    assert await receiver.next() == "READY=1\nSTATUS=3 nodes, 1 site"
    assert systemd.status("reconciling\n2 sites") is True
    assert await receiver.next() == "STATUS=reconciling 2 sites"
    assert systemd.notify("READY=1", "STATUS=ok") is True
    assert await receiver.next() == "READY=1\nSTATUS=ok"
    assert systemd.reloading() is True
    first, second = (await receiver.next()).split("\n")
    assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=")
    assert int(second.split("=", 1)[1]) > 0
    assert systemd.stopping() is True
    assert await receiver.next() == "STOPPING=1"


def test_watchdog_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", "nope")
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert systemd.watchdog_interval() is None, bad


async def test_watchdog_is_fed_only_while_healthy(receiver: Receiver) -> None:
    healthy = True
    checks = 0

    def check() -> bool:
        nonlocal checks
        checks += 1
        return healthy

    feeder = asyncio.create_task(systemd.feed_watchdog(check, interval=0.05))
    try:
        for _ in range(3):
            assert await receiver.next() == "WATCHDOG=1"
        healthy = False
        receiver.pending()  # what was sent while healthy
        seen = checks

        async def checked_three_more_times() -> bool:
            return checks >= seen + 3

        await poll_until(checked_three_more_times, within=DEADLINE, what="three health checks")
        # The check and the send run without an await between them, so nothing can be in flight.
        assert receiver.pending() == []
        healthy = True
        assert await receiver.next() == "WATCHDOG=1"
    finally:
        feeder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await feeder


class _Stop(Exception):
    pass


async def test_watchdog_is_fed_every_half_interval(receiver: Receiver) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        await systemd.feed_watchdog(lambda: True, 30.0, sleep=sleep)
    assert slept == [15.0, 15.0, 15.0]
    assert receiver.pending() == ["WATCHDOG=1"] * 3


async def test_a_health_check_that_raises_stops_feeding(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("controller state unreadable")

    feeder = asyncio.create_task(systemd.feed_watchdog(check, interval=0.05))
    try:

        async def checked_twice() -> bool:
            return calls >= 2

        await poll_until(checked_twice, within=DEADLINE, what="two health checks")
        assert receiver.pending() == []
        assert "treating as unhealthy" in caplog.text
        assert caplog.text.count("no longer feeding") == 1  # logged once, not once per check
    finally:
        feeder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await feeder


async def test_watchdog_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        await systemd.feed_watchdog(lambda: True, interval=0)
