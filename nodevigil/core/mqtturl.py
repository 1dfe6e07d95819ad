"""MQTT broker URLs (``mqtt://host:port``, ``mqtts://``): read by the monitor and the notifiers."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """A parsed ``mqtt://host:port`` (or ``mqtts://``)."""

    host: str
    port: int
    tls: bool


def aiomqtt_url(url: str) -> BrokerUrl:
    """Split an ``mqtt(s)://host[:port]`` URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return BrokerUrl(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls)
