"""The daemon's link to the MQTT broker: subscribes to every agent's topics, feeds the board."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt

from nodevigil.core.config.schema import Mqtt, MqttTls
from nodevigil.core.mqtturl import aiomqtt_url

if TYPE_CHECKING:
    from monitor.heartbeat import HeartbeatBoard

log = logging.getLogger("monitor.heartbeat")  # one logger for the heartbeat side, as before

CHECK_EVERY = 1.0  # the broker is asked for a round trip this often (see _check_link)
LATE = 3.0  # an answer to the link check later than this is logged (once, and its arrival)


class HeartbeatListener:
    """Subscribes to every agent's heartbeat and status, reconnecting with jittered backoff."""

    def __init__(
        self,
        settings: Mqtt,
        board: HeartbeatBoard,
        password: str | None = None,
        *,
        base_dir: Path | None = None,
        check_every: float = CHECK_EVERY,
    ) -> None:
        if check_every <= 0:
            raise ValueError(f"check_every must be positive, not {check_every}")
        self._settings = settings
        self._board = board
        self._password = password
        self._base_dir = base_dir
        self._check_every = check_every

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
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._check_link(client, prefix), name="mqtt-link-check")
                        async for message in client.messages:
                            payload = message.payload
                            if not isinstance(payload, bytes | bytearray):
                                payload = str(payload).encode()
                            self._board.handle(
                                str(message.topic), bytes(payload), prefix, retained=message.retain
                            )
            except* aiomqtt.MqttError as lost:
                if self._board.connected:
                    log.warning("lost the MQTT broker: %s; reconnecting", lost.exceptions[0])
                self._board.link_down()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)

    async def _check_link(self, client: aiomqtt.Client, prefix: str) -> None:
        """Ask the broker for a round trip every ``check_every``; each answer confirms the link.

        The request is an UNSUBSCRIBE from a filter never subscribed to: every broker answers
        it (MQTT 3.1.1 has no way to refuse one), it needs no right in the ACL, and it delivers
        nothing. One request at a time, awaited until it is answered or the link ends (MQTT's
        keepalive ends a silent one); a late answer is logged once, and once more when it comes.
        """
        clock = self._board.clock
        check = f"{prefix}/nodes/+/link-check"
        while True:
            sent = clock.monotonic()
            answer = asyncio.ensure_future(client.unsubscribe(check, timeout=math.inf))
            try:
                try:
                    async with asyncio.timeout(LATE):
                        await asyncio.shield(answer)
                except TimeoutError:
                    log.warning(
                        "the MQTT broker has not answered for %gs: agents' silence is not "
                        "judged until it does",
                        LATE,
                    )
                    await answer
                    log.warning(
                        "the MQTT broker answers again after %.1fs", clock.monotonic() - sent
                    )
            finally:
                answer.cancel()  # only if we are cancelled (the link ended) before it is answered
            self._board.link_confirmed(sent)
            await clock.sleep(max(0.0, sent + self._check_every - clock.monotonic()))


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
