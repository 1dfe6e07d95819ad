"""The world's shape, its timings, and the nodevigil configuration written for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodevigil.app.api.auth import token_digest

# Each site's public address: the loopback aliases Linux routes to lo, so the address that
# DNS publishes for a site is where that site's HAProxy listens.
SITES = {"east": "127.0.0.2", "west": "127.0.0.3"}
NODES_PER_SITE = 3
ZONE = "demo.example."
RECORD = "web.demo.example."
SERVICE = "web"
CUSTOMER = "acme"
DAILY_CHARGE = "288.00"
CURRENCY = "CNY"


def node_names(site: str) -> list[str]:
    """``east-1``, ``east-2``, ... for one site."""
    return [f"{site}-{i}" for i in range(1, NODES_PER_SITE + 1)]


def ms(seconds: float) -> str:
    """A duration in whole milliseconds, as the configuration writes it."""
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True, slots=True)
class Timings:
    """Probe, controller and story timings; ``speed`` divides them all."""

    speed: float = 1.0

    def scaled(self, seconds: float) -> float:
        """``seconds`` at this speed."""
        return seconds / self.speed

    @property
    def interval(self) -> float:
        """Probe interval."""
        return self.scaled(1.0)

    @property
    def timeout(self) -> float:
        """Probe timeout: half the interval, always shorter than it."""
        return self.interval / 2

    @property
    def cycle(self) -> float:
        """The controller's cycle."""
        return self.scaled(0.5)

    @property
    def hold_down(self) -> float:
        """How long a recovered node stays out (doubled for a node that fails again)."""
        return self.scaled(5.0)

    @property
    def agent_interval(self) -> float:
        """The node agents' heartbeat period."""
        return max(0.1, self.scaled(1.0))

    def deadline(self, seconds: float) -> float:
        """How long a story step waits for its outcome before it counts as failed."""
        return self.scaled(seconds) + 10.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the world's parts listen, as the configuration needs them."""

    node_ports: dict[str, int]
    haproxy_sockets: dict[str, Path] | None  # site -> runtime API socket; None: recording LB
    bind_server: str | None  # host:port; None: recording global LB
    tsig_key_file: Path | None
    mqtt_url: str | None
    webhook_url: str
    mqtt_username: str | None = None  # the daemon's broker login, when the broker wants one
    mqtt_password_file: str | None = None
    agent_secret_file: str | None = None  # the agents' keys derive from it (signed heartbeats)


def demo_config(
    endpoints: Endpoints, timings: Timings, admin_token: str, secret_file: str
) -> dict[str, Any]:
    """The nodevigil configuration of the demo world (YAML-ready)."""
    t = timings
    load_balancers: dict[str, Any] = {}
    sites = []
    for site, address in SITES.items():
        lb = f"{site}-lb"
        if endpoints.haproxy_sockets is None:
            load_balancers[lb] = {"type": "recording"}
        else:
            socket = str(endpoints.haproxy_sockets[site])
            load_balancers[lb] = {"type": "haproxy", "socket": socket, "backend": "web"}
        # Two of three nodes may go out; the last one stays in (a whole site down is more
        # likely a monitoring fault than three dead nodes: the panic floor).
        sites.append({"name": site, "address": address, "local_lb": lb, "max_unavailable": 2})
    if endpoints.bind_server is None:
        load_balancers["dns"] = {"type": "recording"}
    else:
        load_balancers["dns"] = {
            "type": "rfc2136",
            "server": endpoints.bind_server,
            "zone": ZONE,
            "ttl": 5,
            "tsig": {"name": "nodevigil", "secret_file": str(endpoints.tsig_key_file)},
        }
    nodes = []
    for site in SITES:
        for name in node_names(site):
            port = endpoints.node_ports[name]
            probes: list[dict[str, Any]] = [
                {"type": "http", "url": f"http://127.0.0.1:{port}/healthz", "body_match": "ok"}
            ]
            if endpoints.mqtt_url is not None:
                probes.append({"type": "mqtt", "max_silence": ms(5 * t.agent_interval)})
            nodes.append({"name": name, "site": site, "addresses": ["127.0.0.1"], "probes": probes})
    config: dict[str, Any] = {
        "timezone": "UTC",
        "state_dir": "state",
        "vantage": "demo",
        "api": {
            "listen": "127.0.0.1:0",
            "tokens": [{"name": "demo", "role": "admin", "sha256": token_digest(admin_token)}],
        },
        "defaults": {
            "interval": ms(t.interval),
            "timeout": ms(t.timeout),
            "rise": 2,
            "fall": 3,
            "flap": {"window": ms(t.scaled(120)), "max_changes": 6, "hold": ms(t.scaled(60))},
        },
        "failover": {
            "cycle": ms(t.cycle),
            "hold_down": ms(t.hold_down),
            "hold_down_max": ms(2 * t.hold_down),
            "site_hold_down": ms(t.hold_down),
        },
        "load_balancers": load_balancers,
        "sites": sites,
        "nodes": nodes,
        "services": [{"name": SERVICE, "sites": list(SITES), "global_lb": "dns", "record": RECORD}],
        "customers": [{"id": CUSTOMER, "services": [SERVICE], "plan": "standard"}],
        "contingency_plans": {
            "standard": {
                "steps": [{"after": "0s", "notify": ["acme-webhook"]}],
                "on_resolve": ["acme-webhook"],
            }
        },
        "notifiers": {
            "acme-webhook": {
                "type": "webhook",
                "url": endpoints.webhook_url,
                "secret_file": secret_file,
            }
        },
        "notifications": {"backoff_initial": ms(t.scaled(0.5)), "backoff_max": ms(t.scaled(5))},
    }
    if endpoints.mqtt_url is not None:
        mqtt: dict[str, Any] = {"url": endpoints.mqtt_url}
        if endpoints.mqtt_username is not None:
            mqtt["username"] = endpoints.mqtt_username
        if endpoints.mqtt_password_file is not None:
            mqtt["password"] = {"secret_file": endpoints.mqtt_password_file}
        if endpoints.agent_secret_file is not None:
            mqtt["agent_secret"] = {"secret_file": endpoints.agent_secret_file}
        config["mqtt"] = mqtt
    return config


CONFIG_HEADER = """\
# Written by `nodevigil demo` for its world on loopback; read it beside docs/configuration.md.
# Two sites (east, west) of three nodes each: every node is a small HTTP server watched by an
# http probe{mqtt}. Each site's local load balancer is {local}; the service web is published
# as {record} by {global_}. Customer acme holds web; its contingency plan
# sends a signed webhook to the demo's receiver when web is wholly unavailable.
# Validate it with: nodevigil check-config -c {path}
"""
