"""The nodevigil daemon's configuration around a test HAProxy, and HAProxy's own view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from failover.lb import ServerState
from failover.lb.haproxy import HAProxyLoadBalancer
from nodevigil.app.api.auth import token_digest
from tests.failover.daemons import HAProxyInstance


def write_haproxy_daemon_config(
    path: Path,
    haproxy: HAProxyInstance,
    *,
    listen: str = "127.0.0.1:0",
    admin_token: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One site ``sh`` behind ``haproxy``, a node ``sh-NAME`` per HAProxy server (an http
    probe of the server's own port), one service ``web``; probes every 200 ms."""
    tokens = [] if admin_token is None else [
        {"name": "ops", "role": "admin", "sha256": token_digest(admin_token)}
    ]  # fmt: skip
    data: dict[str, Any] = {
        "state_dir": str(path.parent / "state"),
        "api": {"listen": listen, "tokens": tokens},
        "defaults": defaults or {"interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 1},
        "failover": {"cycle": "200ms", "hold_down": "1s"},
        "load_balancers": {
            "sh-haproxy": {
                "type": "haproxy",
                "socket": str(haproxy.socket_path),
                "backend": haproxy.backend,
            }
        },
        "sites": [{"name": "sh", "address": "192.0.2.10", "local_lb": "sh-haproxy"}],
        "nodes": [
            {
                "name": f"sh-{name}",
                "site": "sh",
                "lb_server": name,
                "probes": [{"type": "http", "url": f"http://127.0.0.1:{node.port}/"}],
            }
            for name, node in haproxy.nodes.items()
        ],
        "services": [{"name": "web", "sites": ["sh"]}],
    }
    path.write_text(yaml.safe_dump(data))


async def admin_states(haproxy: HAProxyInstance) -> dict[str, ServerState]:
    """Every server's admin state, read from HAProxy itself."""
    lb = HAProxyLoadBalancer(name="check", socket_path=haproxy.socket_path)
    try:
        return {n: s.admin for n, s in (await lb.servers(haproxy.backend)).items()}
    finally:
        await lb.close()
