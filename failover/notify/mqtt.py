"""Events published as JSON envelopes to an MQTT topic, over one long-lived connection."""

from __future__ import annotations

import asyncio
import json
import logging
import random

import aiomqtt

from failover.notify.base import Delivery, Message
from nodevigil.core.config.schema import Mqtt, MqttNotifier
from nodevigil.core.mqtturl import aiomqtt_url

log = logging.getLogger(__name__)


class MqttTransport:
    """Publishes ``message.envelope()`` to the notifier's topic.

    The broker is the notifier's own ``url`` (anonymous) or else the top-level ``mqtt`` broker
    with its username and password. One client is connected on the first send and reused; any
    MQTT error drops it, and the next send connects again.
    """

    def __init__(
        self,
        name: str,
        config: MqttNotifier,
        broker: Mqtt | None,
        password: str | None,
        *,
        timeout: float = 10.0,
    ) -> None:
        if config.url is None and broker is None:
            raise ValueError(f"notifier {name}: no broker url and no top-level mqtt section")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.name = name
        self._config = config
        if config.url is not None:
            self._url = aiomqtt_url(config.url)
            self._username: str | None = None
            self._password: str | None = None
        else:
            assert broker is not None
            self._url = aiomqtt_url(broker.url)
            self._username = broker.username
            self._password = password
        self._timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        """True while a client is held (it may still turn out to be stale on the next send)."""
        return self._client is not None

    async def send(self, message: Message) -> Delivery:
        """Publish once (QoS 1/2 wait for the broker's acknowledgement); MQTT trouble is retry."""
        payload = json.dumps(
            message.envelope(), sort_keys=True, separators=(",", ":"), default=str
        ).encode()
        where = f"mqtt {self.name} ({self._url.host}:{self._url.port})"
        async with self._lock:
            reused = self._client is not None
            try:
                await self._publish(payload)
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                await self._drop()
                if not reused:
                    return Delivery.retry(f"{where}: {_describe(exc)}")
                # The held connection may have died while idle (a broker restart): try a new one
                # once, so the first message after a restart is not needlessly delayed.
                try:
                    await self._publish(payload)
                except (aiomqtt.MqttError, TimeoutError, OSError) as again:
                    await self._drop()
                    return Delivery.retry(f"{where}: {_describe(again)}")
        return Delivery.ok(f"{where}: published to {self._config.topic}")

    async def close(self) -> None:
        """Disconnect from the broker."""
        async with self._lock:
            await self._drop()

    async def _publish(self, payload: bytes) -> None:
        async with asyncio.timeout(self._timeout):
            client = await self._connect()
            await client.publish(
                self._config.topic,
                payload,
                qos=self._config.qos,
                retain=self._config.retain,
                timeout=self._timeout,
            )

    async def _connect(self) -> aiomqtt.Client:
        if self._client is None:
            client = aiomqtt.Client(
                self._url.host,
                self._url.port,
                username=self._username,
                password=self._password,
                identifier=f"nodevigil-notify-{random.getrandbits(32):08x}",
                keepalive=30,
                timeout=self._timeout,
                tls_params=aiomqtt.TLSParameters() if self._url.tls else None,
            )
            await client.__aenter__()
            self._client = client
        return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            log.debug("mqtt %s: disconnect failed: %s", self.name, exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
