"""Launchers for the real programs the demo (and the test suite) runs on loopback.

Each starts its program in a given directory on ephemeral ports, waits until it answers, and
stops it on exit: HAProxy over small HTTP nodes, BIND with a TSIG-updatable zone, Mosquitto.
"""

from nodevigil.app.demo.servers.bind import (
    NAMED,
    ZONE,
    BindInstance,
    addresses_of,
    dns_query,
    run_bind,
    tsig_secret,
)
from nodevigil.app.demo.servers.haproxy import (
    HAPROXY,
    HAProxyInstance,
    haproxy_config,
    run_haproxy,
    start_haproxy,
)
from nodevigil.app.demo.servers.httpnode import HttpNode
from nodevigil.app.demo.servers.mosquitto import MOSQUITTO, Broker, run_mosquitto
from nodevigil.app.demo.servers.process import (
    PortTaken,
    Program,
    ProgramError,
    free_port,
    free_udp_tcp_port,
    locate,
    poll_until,
    spawn,
    start_with_retries,
    wait_ready,
)

__all__ = [
    "HAPROXY",
    "MOSQUITTO",
    "NAMED",
    "ZONE",
    "BindInstance",
    "Broker",
    "HAProxyInstance",
    "HttpNode",
    "PortTaken",
    "Program",
    "ProgramError",
    "addresses_of",
    "dns_query",
    "free_port",
    "free_udp_tcp_port",
    "haproxy_config",
    "locate",
    "poll_until",
    "run_bind",
    "run_haproxy",
    "run_mosquitto",
    "spawn",
    "start_haproxy",
    "start_with_retries",
    "tsig_secret",
    "wait_ready",
]
