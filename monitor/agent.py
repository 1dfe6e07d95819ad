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
import socket
import time
from typing import Any

import aiomqtt
import psutil

from monitor.heartbeat import aiomqtt_url
from nodevigil import __version__

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
    """Publishes a heartbeat every ``interval`` seconds; reconnects with jittered backoff."""

    def __init__(
        self,
        *,
        url: str,
        node: str,
        interval: float = 2.0,
        topic_prefix: str = "nodevigil",
        username: str | None = None,
        password: str | None = None,
        disk_path: str = "/",
    ) -> None:
        if not node:
            raise ValueError("node must be a non-empty name")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._broker = aiomqtt_url(url)
        self._node = node
        self._interval = interval
        self._prefix = topic_prefix.strip("/")
        self._username = username
        self._password = password
        self._disk_path = disk_path
        self._seq = 0

    @property
    def status_topic(self) -> str:
        """Where the agent says online, and the broker says offline on its behalf."""
        return f"{self._prefix}/nodes/{self._node}/status"

    @property
    def heartbeat_topic(self) -> str:
        """Where the heartbeats go."""
        return f"{self._prefix}/nodes/{self._node}/heartbeat"

    async def run(self) -> None:
        """Publish until cancelled; on cancellation say goodbye (``offline``) if connected."""
        delay = 0.5
        psutil.cpu_percent(interval=None)  # the first call only primes the counter
        while True:
            try:
                async with aiomqtt.Client(
                    self._broker.host,
                    self._broker.port,
                    identifier=f"nodevigil-agent-{self._node}-{socket.gethostname()}"[:64],
                    username=self._username,
                    password=self._password,
                    keepalive=max(2, int(self._interval * 2)),
                    will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
                    tls_params=aiomqtt.TLSParameters() if self._broker.tls else None,
                ) as client:
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    log.info("agent %s connected to %s", self._node, self._broker.host)
                    delay = 0.5
                    try:
                        await self._beat(client)
                    except asyncio.CancelledError:
                        await asyncio.shield(self._goodbye(client))
                        raise
            except aiomqtt.MqttError as exc:
                log.warning("agent %s lost the broker: %s; reconnecting", self._node, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)

    async def _beat(self, client: aiomqtt.Client) -> None:
        while True:
            figures = await asyncio.to_thread(read_figures, self._disk_path)
            self._seq += 1
            payload = {
                "node": self._node,
                "seq": self._seq,
                "sent_at": time.time(),
                "interval": self._interval,
                "version": __version__,
                **figures,
            }
            await client.publish(self.heartbeat_topic, json.dumps(payload).encode(), qos=0)
            await asyncio.sleep(self._interval)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        try:
            async with asyncio.timeout(1.0):
                await client.publish(self.status_topic, b"offline", qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError):
            pass  # the broker publishes the last-will for us
