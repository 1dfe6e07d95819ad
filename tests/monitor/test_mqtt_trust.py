"""Issue 12 (1, 2, 9): what a client of the MQTT broker can and cannot make nodevigil believe.

Each test drives the real monitor, board and listener, real node agents and a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from monitor.agentauth import derive_key, sign
from monitor.verdicts import Verdict
from nodevigil.app.demo.servers.httpnode import HttpNode
from tests.brokers import DAEMON_USER, MOSQUITTO, Broker, run_secure_mosquitto
from tests.failover.daemons import poll_until
from tests.monitor.mqtt_world import (
    agent,
    agent_process,
    background,
    new_secret,
    trust_config,
    watching,
    write_key,
)


@pytest.fixture
async def serving() -> AsyncIterator[dict[str, HttpNode]]:
    """Two nodes whose HTTP servers answer."""
    nodes = {name: HttpNode(name) for name in ("n1", "n2")}
    for node in nodes.values():
        await node.start()
    yield nodes
    for node in nodes.values():
        await node.stop()


@pytest.fixture
async def secure_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """Mosquitto as docs/operations.md sets it up: logins, the agents' ACL, TLS."""
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is missing: install the Debian package mosquitto")
    async with run_secure_mosquitto(tmp_path / "mosquitto", ["n1", "n2"]) as broker:
        yield broker


async def publish_as(broker: Broker, messages: list[tuple[str, bytes]], **login: object) -> None:
    """Publish (QoS 1) on the broker's plain port; login is username/password if any."""
    async with aiomqtt.Client("127.0.0.1", broker.port, **login) as client:  # type: ignore[arg-type]
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


# --- 1. an anonymous or unauthorised client cannot fake an outage -------------------------------


async def test_the_broker_refuses_forgers_and_the_daemon_drops_unsigned_offline(
    secure_broker: Broker, serving: dict[str, HttpNode]
) -> None:
    broker = secure_broker
    assert broker.tls is not None and broker.users is not None
    secret = new_secret()
    config = trust_config(
        broker.tls_url,
        dict(serving),
        username=DAEMON_USER,
        tls={"ca_file": str(broker.tls.ca_file)},
    )
    agents = [
        agent(
            broker.tls_url,
            name,
            secret,
            username=name,
            password=broker.users[name],
            tls_ca=broker.tls.ca_file,
        )
        for name in serving
    ]
    password = broker.users[DAEMON_USER]
    async with (
        watching(config, secret=secret, password=password) as watch,
        background(*(a.run() for a in agents)),
    ):
        await watch.all_up()
        # Anonymous clients are refused at the door.
        with pytest.raises(aiomqtt.MqttError):
            await publish_as(broker, [("nodevigil/nodes/n1/status", b"offline")])
        # A node's own login may not write another node's topics (the broker drops it), and
        # what it writes on its own, unsigned, the daemon drops.
        await publish_as(
            broker,
            [("nodevigil/nodes/n2/status", b"offline"), ("nodevigil/nodes/n1/status", b"offline")],
            username="n1",
            password=broker.users["n1"],
        )
        await poll_until(
            lambda: asyncio.sleep(0, watch.board.dropped.get("unsigned") == 1),
            within=10,
            what="n1's unsigned offline dropped",
        )
        await watch.rounds(20)
        assert watch.board.dropped == {"unsigned": 1}
        assert watch.downs.drain() == []
        assert watch.verdict("n1") is Verdict.UP and watch.verdict("n2") is Verdict.UP


@pytest.mark.parametrize("signed", [True, False], ids=["agent_secret", "no_secret"])
async def test_forged_offline_for_every_node_changes_no_verdict(
    mosquitto: Broker, serving: dict[str, HttpNode], signed: bool
) -> None:
    """An open broker: any client publishes ``offline`` for every node, plainly and forged."""
    secret = new_secret() if signed else None
    config = trust_config(mosquitto.url, dict(serving), fall=5)
    # Heartbeats every 2 s, as agents send them by default: none answers a will at once.
    agents = [agent(mosquitto.url, name, secret, interval=2.0) for name in serving]
    async with (
        watching(config, secret=secret) as watch,
        background(*(a.run() for a in agents)),
    ):
        await watch.all_up()
        wrong = derive_key("x" * 64, "n1")
        forged = []
        for name in serving:
            topic = f"nodevigil/nodes/{name}/status"
            stamp = {"node": name, "boot": "00c0ffee", "conn": 1, "seq": 1, "status": "offline"}
            forged += [
                (topic, b"offline"),
                (topic, sign(wrong, "status", {**stamp, "sent_at": time.time()})),
            ]
        await publish_as(mosquitto, forged)
        await watch.rounds(40)
        assert watch.downs.drain() == []
        assert all(v is Verdict.UP for v in watch.monitor.verdicts().values())
        if signed:
            assert watch.board.dropped == {"unsigned": 2, "bad_mac": 2}


# --- a will alone never drains; a real death drains within a round trip -------------------------


@pytest.mark.parametrize("signed", [True, False], ids=["agent_secret", "no_secret"])
async def test_a_will_from_a_node_that_still_serves_does_not_drain_it(
    mosquitto: Broker, serving: dict[str, HttpNode], tmp_path: Path, signed: bool
) -> None:
    secret = new_secret() if signed else None
    key_file = write_key(tmp_path / "n1.key", secret, "n1") if secret else None
    config = trust_config(mosquitto.url, {"n1": serving["n1"]}, fall=10)
    async with (
        watching(config, secret=secret) as watch,
        agent_process(mosquitto, "n1", key_file) as process,
    ):
        await watch.all_up()
        process.send_signal(signal.SIGKILL)  # the agent dies; the node still serves

        async def will_confirmed() -> bool:
            status = watch.monitor.node_status("n1")
            assert status is not None
            mqtt = status["probes"][1]
            return mqtt["consecutive_failures"] >= 1 and "last-will" in mqtt["last"]["detail"]

        await poll_until(will_confirmed, within=10, what="n1's will taken")
        # The confirmation round's http probe passed: the will counted as one failure.
        assert watch.verdict("n1") is Verdict.UP
        assert watch.downs.drain() == []


@pytest.mark.parametrize("signed", [True, False], ids=["agent_secret", "no_secret"])
async def test_a_dead_node_drains_within_a_round_trip_of_its_will(
    mosquitto: Broker, serving: dict[str, HttpNode], tmp_path: Path, signed: bool
) -> None:
    secret = new_secret() if signed else None
    key_file = write_key(tmp_path / "n1.key", secret, "n1") if secret else None
    # fall 10 x 200ms: without the will, the http probe alone would need 2 s.
    config = trust_config(mosquitto.url, {"n1": serving["n1"]}, fall=10)
    async with (
        watching(config, secret=secret) as watch,
        agent_process(mosquitto, "n1", key_file) as process,
    ):
        await watch.all_up()
        await serving["n1"].stop()
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        event = await asyncio.wait_for(watch.downs.get(), timeout=10)
        took = time.monotonic() - killed
        assert event.subject == "n1"
        assert took < 1.2, f"drained {took:.2f}s after the agent died"
        print(f"drained {took:.3f}s after SIGKILL")


async def test_an_mqtt_only_node_drains_on_its_signed_will(
    mosquitto: Broker, tmp_path: Path
) -> None:
    secret = new_secret()
    key_file = write_key(tmp_path / "n1.key", secret, "n1")
    config = trust_config(mosquitto.url, {"n1": None}, fall=10)
    async with (
        watching(config, secret=secret) as watch,
        agent_process(mosquitto, "n1", key_file) as process,
    ):
        await watch.all_up()
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        event = await asyncio.wait_for(watch.downs.get(), timeout=10)
        assert "last-will" in event.reason
        assert time.monotonic() - killed < 1.2


@pytest.mark.parametrize("signed", [True, False], ids=["agent_secret", "no_secret"])
async def test_a_forged_or_replayed_online_does_not_delay_a_death(
    mosquitto: Broker, serving: dict[str, HttpNode], tmp_path: Path, signed: bool
) -> None:
    """Item 9: someone answers the will with ``online`` at once (plain, and a genuine one
    recorded earlier): the node still drains as fast as without them."""
    secret = new_secret() if signed else None
    key_file = write_key(tmp_path / "n1.key", secret, "n1") if secret else None
    config = trust_config(mosquitto.url, {"n1": serving["n1"]}, fall=10)
    topic = "nodevigil/nodes/n1/status"
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port) as spy,
        watching(config, secret=secret) as watch,
        agent_process(mosquitto, "n1", key_file) as process,
    ):
        await spy.subscribe(topic, qos=1)
        await watch.all_up()
        recorded: list[bytes] = []

        async def answer_wills() -> None:
            async for message in spy.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                if message.retain or b"online" in payload:
                    recorded.append(payload)  # the agent's genuine online
                elif b"offline" in payload:
                    for replay in [b"online", *recorded]:
                        await spy.publish(topic, replay, qos=1)

        async with background(answer_wills()):
            await poll_until(lambda: asyncio.sleep(0, bool(recorded)), within=10, what="online")
            await serving["n1"].stop()
            process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.wait_for(watch.downs.get(), timeout=10)
            took = time.monotonic() - killed
        assert took < 1.2, f"drained {took:.2f}s after the agent died"
        print(f"drained {took:.3f}s after SIGKILL, online answered to its will")
        if signed:
            assert watch.board.dropped.get("unsigned") == 1
            assert watch.board.dropped.get("replayed", 0) >= 1


# --- 2. names that are not configured leave nothing behind --------------------------------------


@pytest.mark.parametrize("signed", [True, False], ids=["agent_secret", "no_secret"])
async def test_ghost_agents_leave_no_state_and_no_series(
    mosquitto: Broker, serving: dict[str, HttpNode], signed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    secret = new_secret() if signed else None
    config = trust_config(mosquitto.url, {"n1": serving["n1"]})
    caplog.set_level(logging.WARNING, "monitor.heartbeat")
    async with (
        watching(config, secret=secret) as watch,
        background(agent(mosquitto.url, "n1", secret).run()),
    ):
        await watch.all_up()
        before = len(watch.metrics_text())
        ghosts = [f"ghost-{i}" for i in range(10_000)] + [f"g{i}" + "x" * 60_000 for i in range(5)]
        beat = json.dumps({"seq": 1, "load1": 0.5, "disk_percent": 10}).encode()
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, max_queued_outgoing_messages=0) as c:
            for name in ghosts:
                await c.publish(f"nodevigil/nodes/{name}/heartbeat", beat)
                await c.publish(f"nodevigil/nodes/{name}/status", b"offline")
            await c.publish("nodevigil/nodes/n1/status", b"", qos=1)  # a marker: all sent

        async def all_dropped() -> bool:
            return watch.board.dropped.get("unknown_agent", 0) >= 2 * len(ghosts)

        await poll_until(all_dropped, within=60, what="every ghost message dropped")
        assert set(watch.board.agents) == {"n1"}
        text = watch.metrics_text()
        assert b"ghost" not in text and b"xxxx" not in text
        assert len(text) - before < 2048, (before, len(text))
        assert watch.verdict("n1") is Verdict.UP
        noted = [r for r in caplog.records if "first from" in r.getMessage()]
        assert len(noted) == 1 and len(noted[0].getMessage()) < 500


# --- replays -------------------------------------------------------------------------------------


async def test_replayed_genuine_messages_are_dropped(
    mosquitto: Broker, serving: dict[str, HttpNode]
) -> None:
    """Everything a listener recorded from an agent's earlier life, and from its current one,
    played back: nothing is taken, nothing moves."""
    secret = new_secret()
    config = trust_config(mosquitto.url, {"n1": serving["n1"]})
    recorded: list[tuple[str, bytes]] = []
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port) as spy,
        watching(config, secret=secret) as watch,
    ):
        await spy.subscribe("nodevigil/nodes/n1/#", qos=1)

        async def record() -> None:
            async for message in spy.messages:
                if not message.retain and isinstance(message.payload, bytes):
                    recorded.append((str(message.topic), message.payload))

        async with background(record()):
            async with background(agent(mosquitto.url, "n1", secret).run()):
                await watch.all_up()
            # That agent said goodbye (its signed offline); a new one starts: a new boot.
            state = watch.board.agents["n1"]
            old_boot = state.position.boot
            async with background(agent(mosquitto.url, "n1", secret).run()):

                async def new_life() -> bool:
                    return state.position.boot != old_boot and state.seq >= 3

                await poll_until(new_life, within=10, what="the new agent heard")
                await watch.all_up()
                position = (state.position.boot, state.position.conn)
                dropped = watch.board.dropped.get("replayed", 0)
                old = [m for m in recorded if old_boot is not None and old_boot.encode() in m[1]]
                assert len(old) >= 4  # online, heartbeats, goodbye
                current = recorded[-1]
                await publish_as(mosquitto, [*old, current])

                async def all_refused() -> bool:
                    return watch.board.dropped.get("replayed", 0) >= dropped + len(old) + 1

                await poll_until(all_refused, within=10, what="every replay refused")
                assert (state.position.boot, state.position.conn) == position
                assert not state.offline
                assert watch.verdict("n1") is Verdict.UP
        assert watch.downs.drain() == []
