"""The MQTT transport against a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from failover.notify.mqtt import MqttTransport
from failover.notify.transports import build_transport
from nodevigil.core.config.schema import Mqtt, MqttNotifier
from nodevigil.core.errors import ConfigError
from tests.brokers import Broker
from tests.notify.receivers import Closer, make_message

TOPIC = "nodevigil/events"


def notifier(url: str | None = None, **extra: Any) -> MqttNotifier:
    return MqttNotifier.model_validate({"type": "mqtt", "topic": TOPIC, "url": url, **extra})


@asynccontextmanager
async def subscriber(broker: Broker, topic: str = TOPIC) -> AsyncIterator[aiomqtt.Client]:
    """A client subscribed to ``topic`` before anything is published."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=None) as client:
        await client.subscribe(topic, qos=1)
        yield client


async def next_message(client: aiomqtt.Client, within: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(within):
        async for received in client.messages:
            return received
    raise AssertionError("the subscription ended")


def envelope(received: aiomqtt.Message) -> dict[str, Any]:
    payload = received.payload
    assert isinstance(payload, bytes | bytearray)
    data: dict[str, Any] = json.loads(payload)
    return data


async def test_a_subscriber_receives_the_envelope(mosquitto: Broker, closing: Closer) -> None:
    t = closing(MqttTransport("bus", notifier(mosquitto.url), None, None))
    message = make_message("site.down", "sh", data={"site": "sh", "healthy": 0})

    async with subscriber(mosquitto) as client:
        delivery = await t.send(message)
        received = await next_message(client)

    assert delivery.outcome == "delivered", delivery
    assert str(received.topic) == TOPIC
    assert received.qos == 1
    assert envelope(received) == json.loads(json.dumps(message.envelope()))


async def test_one_connection_serves_many_and_concurrent_sends(
    mosquitto: Broker, closing: Closer
) -> None:
    t = closing(MqttTransport("bus", notifier(mosquitto.url), None, None))
    messages = [make_message("node.down", f"sh-{i}") for i in range(10)]

    async with subscriber(mosquitto) as client:
        deliveries = await asyncio.gather(*(t.send(m) for m in messages))
        got = [envelope(await next_message(client))["id"] for _ in messages]

    assert {d.outcome for d in deliveries} == {"delivered"}
    assert sorted(got) == sorted(m.id for m in messages)
    assert t.connected


async def test_retained_for_a_late_subscriber(mosquitto: Broker, closing: Closer) -> None:
    t = closing(MqttTransport("bus", notifier(mosquitto.url, retain=True, qos=2), None, None))
    message = make_message("service.unavailable", "web")
    assert (await t.send(message)).outcome == "delivered"

    async with subscriber(mosquitto) as client:
        received = await next_message(client)

    assert received.retain
    assert envelope(received)["id"] == message.id


async def test_the_top_level_broker_is_the_default(
    mosquitto: Broker, closing: Closer, tmp_path: Path
) -> None:
    broker = Mqtt.model_validate({"url": mosquitto.url})
    t = closing(build_transport("bus", notifier(None), tmp_path, broker))
    async with subscriber(mosquitto) as client:
        assert (await t.send(make_message())).outcome == "delivered"
        await next_message(client)


async def test_broker_down_is_retry_and_back_is_delivered(
    mosquitto: Broker, closing: Closer
) -> None:
    t = closing(MqttTransport("bus", notifier(mosquitto.url), None, None, timeout=2.0))
    assert (await t.send(make_message())).outcome == "delivered"

    await mosquitto.stop()
    while_down = make_message("node.down", "sh-9")
    delivery = await t.send(while_down)
    assert delivery.outcome == "retry"
    assert f"127.0.0.1:{mosquitto.port}" in delivery.detail
    assert not t.connected
    assert (await t.send(while_down)).outcome == "retry"  # still down: refused at once

    await mosquitto.start()
    async with subscriber(mosquitto) as client:
        delivery = await t.send(while_down)
        received = await next_message(client)
    assert delivery.outcome == "delivered", delivery
    assert envelope(received)["id"] == while_down.id


async def test_a_broker_restart_does_not_cost_a_message(mosquitto: Broker, closing: Closer) -> None:
    t = closing(MqttTransport("bus", notifier(mosquitto.url), None, None, timeout=2.0))
    assert (await t.send(make_message())).outcome == "delivered"

    await mosquitto.restart()  # the held connection is now dead, and nobody told us yet
    message = make_message("node.up", "sh-1")
    async with subscriber(mosquitto) as client:
        delivery = await t.send(message)
        received = await next_message(client)

    assert delivery.outcome == "delivered", delivery
    assert envelope(received)["id"] == message.id


async def test_close_disconnects(mosquitto: Broker) -> None:
    t = MqttTransport("bus", notifier(mosquitto.url), None, None)
    assert (await t.send(make_message())).outcome == "delivered"
    await t.close()
    assert not t.connected
    await t.close()  # twice is harmless


def test_no_broker_at_all_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"notifiers\.bus\.url"):
        build_transport("bus", notifier(None), tmp_path, None)


def test_broker_password_is_read_for_the_default_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BROKER_PASSWORD", raising=False)
    broker = Mqtt.model_validate(
        {
            "url": "mqtt://127.0.0.1:1883",
            "username": "nv",
            "password": {"secret_env": "BROKER_PASSWORD"},
        }
    )
    with pytest.raises(ConfigError, match=r"notifiers\.bus: mqtt\.password: environment"):
        build_transport("bus", notifier(None), tmp_path, broker)
    # A notifier with its own broker does not need the top-level password.
    build_transport("bus", notifier("mqtt://127.0.0.1:1883"), tmp_path, broker)
