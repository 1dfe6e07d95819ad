"""The node agent: runs on a cloud node, publishes psutil figures as an MQTT heartbeat.

The broker holds the agent's last-will (``offline`` on ``<prefix>/nodes/<node>/status``) and
announces it the moment the agent's connection dies, so the daemon learns at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt
import psutil

from monitor.agentauth import KEY_BYTES, sign
from monitor.mqttlink import tls_parameters
from nodevigil import __version__
from nodevigil.core.mqtturl import aiomqtt_url

log = logging.getLogger(__name__)


def read_figures(disk_path: str = "/") -> dict[str, Any]:
    """CPU, memory, disk and load figures (blocking: call it in a thread)."""
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "disk_percent": psutil.disk_usage(disk_path).percent,
        "load1": load1,
    }


class NodeAgent:
    """Publishes a heartbeat every ``interval`` seconds; reconnects with jittered backoff.

    With a ``key`` (the node's agent key, ``nodevigil agent-key``) every message is signed and
    stamped (boot, connection, sequence, time), and so is the last-will left with the broker
    at each connect: the daemon takes it for this connection only, and only once.
    """

    def __init__(
        self,
        *,
        url: str,
        node: str,
        interval: float = 2.0,
        topic_prefix: str = "nodevigil",
        username: str | None = None,
        password: str | None = None,
        key: bytes | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        disk_path: str = "/",
    ) -> None:
        if not node:
            raise ValueError("node must be a non-empty name")
        if interval <= 0:
            raise ValueError("interval must be positive")
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self._broker = aiomqtt_url(url)
        if not self._broker.tls and (tls_ca or tls_cert):
            raise ValueError("TLS files need an mqtts:// url")
        self._tls = tls_parameters(tls_ca, tls_cert, tls_key) if self._broker.tls else None
        self._node = node
        self._interval = interval
        self._prefix = topic_prefix.strip("/")
        self._username = username
        self._password = password
        self._key = key
        self._disk_path = disk_path
        self._boot = secrets.token_hex(8)  # a new life: the daemon orders messages within it
        self._conn = 0
        self._seq = 0

    @property
    def status_topic(self) -> str:
        """Where the agent says online, and the broker says offline on its behalf."""
        return f"{self._prefix}/nodes/{self._node}/status"

    @property
    def heartbeat_topic(self) -> str:
        """Where the heartbeats go."""
        return f"{self._prefix}/nodes/{self._node}/heartbeat"

    def _stamp(self) -> dict[str, Any]:
        self._seq += 1
        return {
            "node": self._node,
            "boot": self._boot,
            "conn": self._conn,
            "seq": self._seq,
            "sent_at": time.time(),
        }

    def _status(self, status: str) -> bytes:
        """A status payload: signed JSON with a key, the plain word without."""
        if self._key is None:
            return status.encode()
        return sign(self._key, "status", {**self._stamp(), "status": status})

    async def run(self) -> None:
        """Publish until cancelled; on cancellation say goodbye (``offline``) if connected."""
        delay = 0.5
        psutil.cpu_percent(interval=None)  # the first call only primes the counter
        while True:
            self._conn += 1
            will = self._status("offline")  # stamped with this connection, signed now
            try:
                async with aiomqtt.Client(
                    self._broker.host,
                    self._broker.port,
                    identifier=f"nodevigil-agent-{self._node}-{socket.gethostname()}"[:64],
                    username=self._username,
                    password=self._password,
                    keepalive=max(2, int(self._interval * 2)),
                    will=aiomqtt.Will(self.status_topic, will, qos=1, retain=True),
                    tls_params=self._tls,
                ) as client:
                    online = self._status("online")
                    await client.publish(self.status_topic, online, qos=1, retain=True)
                    log.info("agent %s connected to %s", self._node, self._broker.host)
                    delay = 0.5
                    try:
                        await self._beat(client)
                    except asyncio.CancelledError:
                        await asyncio.shield(self._goodbye(client, will))
                        raise
            except aiomqtt.MqttError as exc:
                log.warning("agent %s lost the broker: %s; reconnecting", self._node, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)

    async def _beat(self, client: aiomqtt.Client) -> None:
        while True:
            figures = await asyncio.to_thread(read_figures, self._disk_path)
            body = {
                **self._stamp(),
                "interval": self._interval,
                "version": __version__,
                **figures,
            }
            if self._key is not None:
                payload = sign(self._key, "heartbeat", body)
            else:
                payload = json.dumps(body).encode()
            await client.publish(self.heartbeat_topic, payload, qos=0)
            await asyncio.sleep(self._interval)

    async def _goodbye(self, client: aiomqtt.Client, will: bytes) -> None:
        # The will itself: it names this connection, and the daemon takes it once.
        try:
            async with asyncio.timeout(1.0):
                await client.publish(self.status_topic, will, qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError):
            pass  # the broker publishes the last-will for us
