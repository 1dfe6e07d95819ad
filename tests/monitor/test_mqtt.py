"""The node agent and the daemon's heartbeat listener against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from monitor.agent import NodeAgent
from monitor.agentauth import derive_key, format_key
from monitor.heartbeat import HeartbeatBoard, HeartbeatListener
from monitor.metrics import AgentCollector, MonitorMetrics
from monitor.monitor import Monitor
from monitor.verdicts import Verdict
from nodevigil.core.clock import ManualClock, SystemClock
from nodevigil.core.config import Config, MqttProbe, parse_config
from nodevigil.core.events import Event, EventBus
from tests.brokers import Broker
from tests.failover.daemons import poll_until
from tests.leakcheck import register


def mqtt_config(broker: Broker, **probe: Any) -> Config:
    return parse_config(
        {
            "mqtt": {"url": broker.url},
            "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 2, "fall": 3},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {"name": "n1", "site": "s", "probes": [{"type": "mqtt", **probe}]},
            ],
        }
    )


@contextlib.asynccontextmanager
async def background(*coros: Any) -> AsyncIterator[list[asyncio.Task[Any]]]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def watching(
    config: Config, board: HeartbeatBoard
) -> AsyncIterator[tuple[Monitor, EventBus]]:
    bus = EventBus()
    metrics = MonitorMetrics(CollectorRegistry())
    assert config.mqtt is not None
    async with (
        Monitor(config, bus=bus, clock=SystemClock(), metrics=metrics, board=board) as monitor,
        background(HeartbeatListener(config.mqtt, board).run()),
    ):
        yield monitor, bus


async def test_agent_heartbeats_reach_the_daemon(mosquitto: Broker) -> None:
    board = HeartbeatBoard(SystemClock(), agents=["n1"])
    config = mqtt_config(mosquitto)
    assert config.mqtt is not None
    agent = NodeAgent(url=mosquitto.url, node="n1", interval=0.2)
    async with background(HeartbeatListener(config.mqtt, board).run(), agent.run()):

        async def heard() -> bool:
            state = board.agents.get("n1")
            return state is not None and state.seq >= 2 and "memory_percent" in state.figures

        await poll_until(heard, within=10, what="two heartbeats from n1")
    registry = CollectorRegistry()
    registry.register(AgentCollector(board))
    percent = board.agents["n1"].figures["memory_percent"]
    ratio = registry.get_sample_value("nodevigil_agent_memory_ratio", {"node": "n1"})
    assert ratio is not None and ratio == pytest.approx(percent / 100) and 0 <= ratio <= 1


async def test_killed_agent_is_judged_down_by_its_last_will(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """A node whose only probe is mqtt drains on its agent's signed will at once."""
    secret = secrets.token_hex(32)
    register("mqtt agent secret", secret)
    key_file = tmp_path / "n1.key"
    key_file.write_text(format_key(derive_key(secret, "n1")))
    board = HeartbeatBoard(SystemClock(), agent_secret=secret)
    # max_silence is long: only the broker's last-will can explain a quick verdict.
    config = mqtt_config(mosquitto, max_silence="60s")
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodevigil",
        "agent",
        "--mqtt",
        mosquitto.url,
        "--node",
        "n1",
        "--interval",
        "200ms",
        "--key-file",
        str(key_file),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with watching(config, board) as (monitor, bus):
            downs = bus.subscribe(["node.down"])

            async def up() -> bool:
                return monitor.verdicts()["n1"] is Verdict.UP

            await poll_until(up, within=15, what="n1 up")
            agent.send_signal(signal.SIGKILL)
            event: Event = await asyncio.wait_for(downs.get(), timeout=10)
            assert event.subject == "n1"
            assert "last-will" in event.reason
    finally:
        with contextlib.suppress(ProcessLookupError):
            agent.kill()
        await agent.wait()


async def test_silent_agent_and_resource_limits(mosquitto: Broker) -> None:
    board = HeartbeatBoard(SystemClock())
    config = mqtt_config(mosquitto, max_silence="1s", limits={"disk_percent": 95})
    async with (
        watching(config, board) as (monitor, _),
        aiomqtt.Client("127.0.0.1", mosquitto.port) as client,
    ):
        topic = "nodevigil/nodes/n1/heartbeat"

        async def beat(disk: float) -> None:
            await client.publish(topic, json.dumps({"seq": 1, "disk_percent": disk}).encode())

        async def verdict_is(v: Verdict) -> bool:
            return monitor.verdicts()["n1"] is v

        async def keep_beating(disk: float, until: Verdict) -> None:
            async def check() -> bool:
                await beat(disk)
                return await verdict_is(until)

            await poll_until(check, within=15, interval=0.2, what=f"n1 {until}")

        await keep_beating(50.0, Verdict.UP)
        await keep_beating(97.0, Verdict.DOWN)
        status = monitor.node_status("n1")
        assert status is not None
        assert "disk_percent 97 is over the limit 95" in status["probes"][0]["last"]["detail"]
        await keep_beating(50.0, Verdict.UP)
        # Silence: no heartbeat for more than max_silence takes it down.
        await poll_until(lambda: verdict_is(Verdict.DOWN), within=10, what="silence judged")


async def test_broker_restart_does_not_mark_nodes_down(mosquitto: Broker) -> None:
    board = HeartbeatBoard(SystemClock())
    config = mqtt_config(mosquitto, max_silence="2s")
    agent = NodeAgent(url=mosquitto.url, node="n1", interval=0.2)
    async with watching(config, board) as (monitor, bus), background(agent.run()):
        downs = bus.subscribe(["node.down"])

        async def up() -> bool:
            return monitor.verdicts()["n1"] is Verdict.UP

        await poll_until(up, within=15, what="n1 up")
        await mosquitto.stop()
        await poll_until(
            lambda: asyncio.sleep(0, not board.connected), within=15, what="link down seen"
        )
        await asyncio.sleep(2.5)  # longer than max_silence: the outage must not judge n1
        await mosquitto.start()
        seq = board.agents["n1"].seq

        async def resumed() -> bool:
            return board.connected and board.agents["n1"].seq > seq + 3

        await poll_until(resumed, within=20, what="heartbeats resumed after the restart")
        assert downs.drain() == []
        assert monitor.verdicts()["n1"] is Verdict.UP


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("nodevigil/nodes/n1/heartbeat", b"not json", "malformed"),
        ("nodevigil/nodes/n1/heartbeat", b"[1, 2]", "malformed"),
        ("nodevigil/nodes/n1/heartbeat", b'{"disk_percent": "full"}', "malformed"),
        ("nodevigil/nodes/n1/heartbeat", b'{"load1": -1}', "malformed"),
        ("nodevigil/nodes/n1/heartbeat", b"{" + b" " * 70_000 + b"}", "too_large"),
        ("nodevigil/nodes/n1/heartbeat", b'{"node": "n2", "seq": 1}', "wrong_node"),
        ("nodevigil/nodes/n1/status", b"exploded", "malformed"),
        ("nodevigil/nodes/n1/x/heartbeat", b"{}", "topic"),
    ],
)
def test_malformed_payloads_are_counted_and_dropped(
    topic: str, payload: bytes, reason: str
) -> None:
    board = HeartbeatBoard(SystemClock(), agents=["n1"])
    board.handle(topic, payload, "nodevigil")
    assert board.dropped == {reason: 1}
    assert all(s.last_seen is None for s in board.agents.values())


async def test_malformed_payloads_over_a_real_broker(mosquitto: Broker) -> None:
    board = HeartbeatBoard(SystemClock(), agents=["n1"])
    config = mqtt_config(mosquitto)
    assert config.mqtt is not None
    async with background(HeartbeatListener(config.mqtt, board).run()):
        await poll_until(lambda: asyncio.sleep(0, board.connected), within=10, what="connected")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for _ in range(3):
                await client.publish("nodevigil/nodes/n1/heartbeat", b"\xff\xfe garbage")
            await client.publish("nodevigil/nodes/n1/heartbeat", b'{"seq": 7, "load1": 0.5}')

        async def handled() -> bool:
            state = board.agents.get("n1")
            return board.dropped.get("malformed") == 3 and state is not None and state.seq == 7

        await poll_until(handled, within=10, what="3 drops and one good heartbeat")


def test_a_will_is_believed_only_if_our_link_survives_it() -> None:
    later: list[Any] = []
    board = HeartbeatBoard(
        SystemClock(), schedule=lambda _delay, fn: later.append(fn), agents="abcd"
    )
    seen: list[str] = []
    board.on_offline = seen.append
    board.link_up()
    board.handle("nodevigil/nodes/a/status", b"offline", "nodevigil")
    board.handle("nodevigil/nodes/b/status", b"offline", "nodevigil")
    board.handle("nodevigil/nodes/b/heartbeat", b"{}", "nodevigil")  # b spoke again at once
    board.handle("nodevigil/nodes/c/status", b"offline", "nodevigil", retained=True)
    for fn in later:
        fn()
    # Unsigned, anyone could have said b's heartbeat: b's will is still confirmed by its
    # node's other probes, but b's own mqtt probe follows what b said last.
    assert seen == ["a", "b"]
    assert board.agents["a"].offline and not board.agents["b"].offline
    later.clear()
    board.handle("nodevigil/nodes/d/status", b"offline", "nodevigil")
    board.link_down()  # the broker is shutting down and sent everyone's will
    for fn in later:
        fn()
    assert seen == ["a", "b"]


class SilentCut:
    """A TCP relay to the broker that can stop forwarding without closing anything: the
    daemon's own link goes silent, as when its uplink breaks (no FIN, no RST)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> SilentCut:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Hold every byte from now on, both ways (delivered late if ``heal``)."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward again, the held bytes first (as TCP retransmits once a path is back)."""
        self._flowing.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()


async def test_a_silent_cut_of_our_own_link_judges_no_node(mosquitto: Broker) -> None:
    """Our broker link goes silent (no FIN, no RST): MQTT's keepalive notices only after 10 to
    20 s, and agents look silent long before. Their silence is not judged until the broker has
    answered us since; a silent agent on a link that answers still is (the test above)."""
    board = HeartbeatBoard(SystemClock())
    agent = NodeAgent(url=mosquitto.url, node="n1", interval=0.2)
    async with SilentCut(mosquitto.port) as relay:
        base = mqtt_config(mosquitto, max_silence="1s")
        assert base.mqtt is not None  # the daemon reaches the broker through the relay
        config = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"url": relay.url})})
        async with watching(config, board) as (monitor, bus), background(agent.run()):
            downs = bus.subscribe(["node.down"])

            async def up() -> bool:
                return monitor.verdicts()["n1"] is Verdict.UP

            await poll_until(up, within=15, what="n1 up")
            relay.cut()
            cut_at = asyncio.get_running_loop().time()

            async def doubted() -> bool:
                status = monitor.node_status("n1")
                assert status is not None
                last = status["probes"][0]["last"]
                # Past max_silence and fall rounds of 200 ms: the old code had judged n1 down.
                late = asyncio.get_running_loop().time() - cut_at > 2.5
                return late and last["ok"] is None and "not answered" in last["detail"]

            await poll_until(doubted, within=10, what="silence not judged while cut")
            assert board.connected  # the keepalive has not noticed yet
            assert downs.drain() == []
            relay.heal()
            seq = board.agents["n1"].seq

            async def resumed() -> bool:
                return board.agents["n1"].seq > seq + 3

            await poll_until(resumed, within=20, what="heartbeats after the cut healed")
            assert downs.drain() == []
            assert monitor.verdicts()["n1"] is Verdict.UP


def test_silence_is_judged_only_up_to_the_brokers_last_answer() -> None:
    clock = ManualClock()
    config = parse_config(
        {
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {"name": "n1", "site": "s", "probes": [{"type": "mqtt", "max_silence": "2s"}]}
            ],
        }
    )
    spec = config.nodes[0].probes[0]
    assert isinstance(spec, MqttProbe)
    board = HeartbeatBoard(clock, agents=["n1", "n2"])
    board.link_up()
    start = clock.monotonic()
    clock.advance(1.0)
    board.handle("nodevigil/nodes/n1/heartbeat", b'{"seq": 1}', "nodevigil")
    clock.advance(2.5)  # n1 silent for 2.5 s, and the broker has not answered since the start
    assert board.judge(spec, "n1", grace=5.0) == (
        None,
        "not judged: no heartbeat for 2.5s (max 2s), but the MQTT broker has not answered us "
        "for 3.5s",
    )
    board.link_confirmed(start + 3.0)  # a request sent 2 s after the heartbeat: not enough
    assert board.judge(spec, "n1", grace=5.0)[0] is None
    board.link_confirmed(clock.monotonic())  # answered after n1's deadline: n1 is the silent one
    assert board.judge(spec, "n1", grace=5.0) == (False, "no heartbeat for 2.5s (max 2s)")
    board.link_confirmed(start + 1.0)  # an older answer moves nothing back
    assert board.judge(spec, "n1", grace=5.0)[0] is False
    # n2 was never heard since the link came up: its grace, then the same rule.
    clock.advance(3.0)
    assert board.judge(spec, "n2", grace=5.0) == (
        None,
        "not judged: no heartbeat for 6.5s, but the MQTT broker has not answered us for 3.0s",
    )
    board.link_confirmed(clock.monotonic())
    assert board.judge(spec, "n2", grace=5.0) == (False, "no heartbeat for 6.5s")
    board.link_down()
    board.link_confirmed(clock.monotonic() + 1.0)  # a late answer after the link ended
    assert board.judge(spec, "n2", grace=5.0) == (
        None,
        "daemon is not connected to the MQTT broker",
    )
