"""The daemon's link to the MQTT broker: subscribes to every agent's topics, feeds the board."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt

from nodevigil.core.config.schema import Mqtt, MqttTls
from nodevigil.core.mqtturl import aiomqtt_url

if TYPE_CHECKING:
    from monitor.heartbeat import HeartbeatBoard

log = logging.getLogger("monitor.heartbeat")  # one logger for the heartbeat side, as before


class HeartbeatListener:
    """Subscribes to every agent's heartbeat and status, reconnecting with jittered backoff."""

    def __init__(
        self,
        settings: Mqtt,
        board: HeartbeatBoard,
        password: str | None = None,
        *,
        base_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._board = board
        self._password = password
        self._base_dir = base_dir

    async def run(self) -> None:
        """Listen until cancelled."""
        url = aiomqtt_url(self._settings.url)
        prefix = self._settings.topic_prefix.strip("/")
        tls = self._settings.tls or MqttTls()
        tls_params = (
            tls_parameters(tls.ca_file, tls.cert_file, tls.key_file, self._base_dir)
            if url.tls
            else None
        )
        if not self._board.authenticated:
            log.warning(
                "mqtt.agent_secret is not set: agent messages are not authenticated, so any "
                "client that may publish to the broker can speak for any node (a last-will is "
                "still confirmed by the node's other probes before it counts)"
            )
        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    url.host,
                    url.port,
                    username=self._settings.username,
                    password=self._password,
                    identifier=f"nodevigil-{random.getrandbits(32):08x}",
                    keepalive=10,
                    tls_params=tls_params,
                ) as client:
                    await client.subscribe(f"{prefix}/nodes/+/heartbeat", qos=0)
                    await client.subscribe(f"{prefix}/nodes/+/status", qos=1)
                    self._board.link_up()
                    log.info("connected to MQTT broker %s:%d", url.host, url.port)
                    delay = 0.5
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        self._board.handle(
                            str(message.topic), bytes(payload), prefix, retained=message.retain
                        )
            except aiomqtt.MqttError as exc:
                if self._board.connected:
                    log.warning("lost the MQTT broker: %s; reconnecting", exc)
                self._board.link_down()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)


def tls_parameters(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    base_dir: Path | None = None,
) -> aiomqtt.TLSParameters:
    """TLS settings for an ``mqtts://`` link; relative paths are read from ``base_dir``."""

    def where(path: Path | None) -> str | None:
        if path is None:
            return None
        return str(base_dir / path if base_dir is not None and not path.is_absolute() else path)

    return aiomqtt.TLSParameters(
        ca_certs=where(ca_file), certfile=where(cert_file), keyfile=where(key_file)
    )
