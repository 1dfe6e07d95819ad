"""A real HAProxy over small aiohttp nodes: re-exported from ``nodevigil.app.demo.servers``."""

from nodevigil.app.demo.servers.haproxy import (
    HAPROXY,
    HAProxyInstance,
    haproxy_config,
    run_haproxy,
    start_haproxy,
)
from nodevigil.app.demo.servers.httpnode import HttpNode

__all__ = [
    "HAPROXY",
    "HAProxyInstance",
    "HttpNode",
    "haproxy_config",
    "run_haproxy",
    "start_haproxy",
]
