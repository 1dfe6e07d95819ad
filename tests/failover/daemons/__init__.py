"""Start real HAProxy, BIND and PowerDNS on loopback for tests and benchmarks."""

from tests.failover.daemons.bind import NAMED, ZONE, BindInstance, dns_query, run_bind, tsig_secret
from tests.failover.daemons.haproxy import (
    HAPROXY,
    HAProxyInstance,
    HttpNode,
    haproxy_config,
    run_haproxy,
)
from tests.failover.daemons.powerdns import (
    PDNS_SERVER,
    PowerDnsInstance,
    pdns_schema,
    run_powerdns,
)
from tests.failover.daemons.process import (
    Daemon,
    DaemonError,
    PortTaken,
    free_port,
    free_udp_tcp_port,
    poll_until,
)

__all__ = [
    "HAPROXY",
    "NAMED",
    "PDNS_SERVER",
    "ZONE",
    "BindInstance",
    "Daemon",
    "DaemonError",
    "HAProxyInstance",
    "HttpNode",
    "PortTaken",
    "PowerDnsInstance",
    "dns_query",
    "free_port",
    "free_udp_tcp_port",
    "haproxy_config",
    "pdns_schema",
    "poll_until",
    "run_bind",
    "run_haproxy",
    "run_powerdns",
    "tsig_secret",
]
