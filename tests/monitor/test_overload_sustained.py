"""A monitor overloaded for good (not stalled once) judges no serving node, but a dead one still.

A loop whose every turn is a little late never has one lag sample over the guard's threshold,
yet its probes spend their time queued behind other work and time out (bench/load_bench.py
``--hog``: a steady node judged down, 161 times in one run, before monitor.looplag). Here a CPU
hog in the test process keeps every loop turn busy; the nodes' HTTP server answers on the same
loop, as the benchmark's targets share its cores.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry

from monitor.heartbeat import HeartbeatBoard
from monitor.metrics import MonitorMetrics
from monitor.monitor import OVERLOAD_HOLD, Monitor
from monitor.verdicts import Verdict
from nodevigil.core.clock import SystemClock
from nodevigil.core.config import Config, parse_config
from nodevigil.core.events import EventBus
from tests.failover.daemons import free_port, poll_until

SERVING = 100
TURN = 0.1  # each loop turn the hog takes: well under the guard's share of a 900 ms timeout
WATCHED_FOR = 4.0  # seconds of sustained overload in which no serving node may go down
STALLS = 3
ANSWER_TURNS = 10  # loop turns the serving nodes' server takes to answer


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A health page on a kept-alive connection: 200 to every request, after a few turns of
    the loop (instant on an idle loop; on a saturated one, each turn waits behind the rest)."""
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            for _ in range(ANSWER_TURNS):
                await asyncio.sleep(0)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _config(port: int, dead: int) -> Config:
    serving = [
        {
            "name": f"serving-{i}",
            "site": "s",
            "probes": [{"type": "http", "url": f"http://127.0.0.1:{port}/healthz"}],
        }
        for i in range(SERVING)
    ]
    dead_node = {
        "name": "dead",
        "site": "s",
        "probes": [{"type": "http", "url": f"http://127.0.0.1:{dead}/healthz"}],
    }
    return parse_config(
        {
            "defaults": {"interval": "1s", "timeout": "900ms", "rise": 1, "fall": 2},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [*serving, dead_node],
        }
    )


async def _hog(running: list[bool]) -> None:
    """Busy for TURN on every turn of the loop: the loop is never idle, never stalled long."""
    while running[0]:
        until = time.perf_counter() + TURN
        while time.perf_counter() < until:
            pass
        await asyncio.sleep(0)


async def test_sustained_overload_judges_no_serving_node_but_still_a_dead_one() -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    registry = CollectorRegistry()
    clock = SystemClock()
    running = [True]
    async with (
        server,
        Monitor(
            _config(port, free_port()),
            bus=EventBus(),
            clock=clock,
            metrics=MonitorMetrics(registry),
            board=HeartbeatBoard(clock),
        ) as monitor,
    ):
        hog = asyncio.create_task(_hog(running))
        downs: set[str] = set()

        async def dead_is_down() -> bool:
            downs.update(n for n, v in monitor.verdicts().items() if v is Verdict.DOWN)
            return monitor.verdicts()["dead"] is Verdict.DOWN

        try:
            # The refused connections are the node's own answer: no overload fakes them.
            await poll_until(dead_is_down, within=20, what="dead node judged down under load")
            watched_until = time.monotonic() + WATCHED_FOR
            while time.monotonic() < watched_until:
                await dead_is_down()
                await asyncio.sleep(0.05)
            # The monitor says it is overloaded: the gauge, stats() and its failures withheld.
            assert monitor.overloaded()
            assert registry.get_sample_value("nodevigil_monitor_overloaded") == 1
            stats = monitor.stats()
            assert stats["overloaded"] is True
            assert stats["untrusted"] > 0, "the load timed no probe out: the test proves nothing"
        finally:
            running[0] = False
            await hog
        wrong = sorted(downs - {"dead"})
        assert not wrong, f"{len(wrong)} serving nodes judged down by the overload: {wrong[:5]}"
        assert "dead" in downs


# The serving nodes' HTTP server in a process of its own, stopped with the loop: one machine
# overloaded, the monitor and the nodes it watches on the same cores (as in load_bench).
SERVER = """
import asyncio, sys
async def answer(reader, writer):
    try:
        while await reader.readuntil(b"\\r\\n\\r\\n"):
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


@pytest.mark.slow
async def test_stalls_longer_than_the_hold_judge_no_serving_node() -> None:
    """The machine frozen for longer than the overload hold, the nodes' server with it: when the
    loop turns again, the probes that ran out of time are judged before the lag watch's own
    tick has run; the stall they sat through is read from the pending tick (monitor.looplag)."""
    server = subprocess.Popen(  # noqa: ASYNC220 -- signalled and killed synchronously
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(await asyncio.to_thread(server.stdout.readline))
        await _judged_through_frozen_machine(server, port)
    finally:
        server.kill()
        server.wait()
        for pipe in (server.stdin, server.stdout):
            if pipe is not None:
                pipe.close()


async def _judged_through_frozen_machine(server: subprocess.Popen[str], port: int) -> None:
    clock = SystemClock()
    async with Monitor(
        _config(port, free_port()),
        bus=EventBus(),
        clock=clock,
        metrics=MonitorMetrics(CollectorRegistry()),
        board=HeartbeatBoard(clock),
    ) as monitor:
        await poll_until(
            lambda: asyncio.sleep(
                0, all(v is Verdict.UP for n, v in monitor.verdicts().items() if n != "dead")
            ),
            within=10,
            what="serving nodes up",
        )
        downs: set[str] = set()
        for _ in range(STALLS):
            server.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(0.15)  # rounds start and wait on the stopped server
                time.sleep(OVERLOAD_HOLD + 0.2)  # noqa: ASYNC251 -- one turn longer than the hold
            finally:
                server.send_signal(signal.SIGCONT)
            turned_at = time.monotonic()
            while time.monotonic() - turned_at < 0.5:  # a few rounds between stalls
                downs.update(n for n, v in monitor.verdicts().items() if v is Verdict.DOWN)
                await asyncio.sleep(0.02)
        assert monitor.stats()["untrusted"] > 0, "no probe ran out of time: the test proves nothing"
        assert downs <= {"dead"}, f"serving nodes judged down by the monitor's stalls: {downs}"
