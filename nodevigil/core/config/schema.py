"""The configuration schema: frozen, typed objects parsed once from the operator's YAML."""

from __future__ import annotations

import ipaddress
import re
import socket
import weakref
import zoneinfo
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nodevigil.core.durations import format_duration, parse_duration
from nodevigil.core.tlsfiles import TlsFileError, client_context, server_context

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _to_seconds(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a duration is written with a unit, e.g. 1s")
    if isinstance(value, int | float):
        # A bare number is ambiguous (seconds? milliseconds?): operators must say.
        raise ValueError(f"{value} has no unit; write e.g. {value}s or {value}ms")
    if isinstance(value, str):
        return parse_duration(value)
    return value


Duration = Annotated[
    float, BeforeValidator(_to_seconds), PlainSerializer(format_duration, return_type=str)
]


class Frozen(BaseModel):
    """Base of every configuration object: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise ValueError with a readable reason."""
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not host:port")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port")
        return host, default_port
    port = int(port_text)
    if not 0 <= port < 65536:  # 0 lets the API listen on an ephemeral port (tests, demo)
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


def _check_address(value: str) -> str:
    split_host_port(value)
    return value


Address = Annotated[str, AfterValidator(_check_address)]


def _check_dns_address(value: str) -> str:
    split_host_port(value, 53)
    return value


DnsAddress = Annotated[str, AfterValidator(_check_dns_address)]  # host[:port], port 53 if left out


# --- probes ---------------------------------------------------------------------------------


class ProbeBase(Frozen):
    """What every probe has: a name, and an interval, timeout and attempts (from defaults)."""

    name: Name | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    attempts: int | None = Field(default=None, ge=1, le=5)

    @property
    def label(self) -> str:
        """The probe's name, or its type when unnamed (names are filled in after parsing)."""
        return self.name or str(getattr(self, "type", "probe"))


class HttpProbe(ProbeBase):
    """GET (or another method) a URL and check the status, optionally the body and latency."""

    type: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200], min_length=1
    )
    body_match: str | None = None
    max_latency: Duration | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    tls_verify: bool = True

    @field_validator("body_match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class TcpProbe(ProbeBase):
    """Open a TCP connection."""

    type: Literal["tcp"]
    address: Address


class TlsProbe(ProbeBase):
    """Complete a TLS handshake and check how long the certificate has left."""

    type: Literal["tls"]
    address: Address
    server_name: str | None = None
    min_days_left: float = Field(default=14, ge=0)
    verify: bool = True
    ca_file: Path | None = None


class DnsProbe(ProbeBase):
    """Ask a DNS server a question; optionally require given answers."""

    type: Literal["dns"]
    server: str
    query: str
    record_type: Literal["A", "AAAA", "CNAME", "MX", "NS", "TXT", "SOA", "SRV"] = "A"
    expect: list[str] = Field(default_factory=list)

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        split_host_port(value, default_port=53)
        return value


class IcmpProbe(ProbeBase):
    """Ping an address (unprivileged ICMP datagram sockets where the kernel allows)."""

    type: Literal["icmp"]
    address: str
    count: int = Field(default=1, ge=1, le=10)
    privileged: bool | None = None  # None: raw sockets when running as root, else datagram


class ResourceLimits(Frozen):
    """Agent figures above which the node is judged down (percentages and 1-minute load)."""

    disk_percent: float | None = Field(default=None, gt=0, le=100)
    memory_percent: float | None = Field(default=None, gt=0, le=100)
    cpu_percent: float | None = Field(default=None, gt=0, le=100)
    load1: float | None = Field(default=None, gt=0)


class MqttProbe(ProbeBase):
    """The node agent's heartbeat: fails on silence, on its last-will, or on resource limits."""

    type: Literal["mqtt"]
    max_silence: Duration = 10.0
    agent: Name | None = None  # the agent's node name when it differs from the node's
    limits: ResourceLimits = ResourceLimits()


Probe = Annotated[
    HttpProbe | TcpProbe | TlsProbe | DnsProbe | IcmpProbe | MqttProbe,
    Field(discriminator="type"),
]


# --- the fleet ------------------------------------------------------------------------------


class FlapDamping(Frozen):
    """A node whose verdict changes more than ``max_changes`` in ``window`` is held down."""

    window: Duration = 120.0
    max_changes: int = Field(default=6, ge=2)
    hold: Duration = 60.0


class Defaults(Frozen):
    """Values a probe or node takes when it does not set its own."""

    # The timeout and attempts ride out a lossy network (tests/faults/test_packet_loss.py):
    # through 20 % packet loss each way and 0-200 ms of answer jitter, probe rounds of up to
    # 5 hedged tries within 900 ms failed 2 times in 8,087; with 500 ms and 2 tries they failed
    # 467 times and 19 healthy nodes were judged down in 133 node-minutes. A dead node is still
    # judged down within interval x fall + timeout.
    interval: Duration = 1.0
    # 900 ms leaves room for TCP to resend a lost request or answer (RTO at least 200 ms).
    timeout: Duration = 0.9
    rise: int = Field(default=2, ge=1, le=100)
    fall: int = Field(default=3, ge=1, le=100)
    # Tries start only when earlier ones failed or are slower than timeout / attempts, so a
    # healthy, quick node costs one request per round, whatever this says.
    attempts: int = Field(default=5, ge=1, le=5)
    flap: FlapDamping = FlapDamping()


class Node(Frozen):
    """One cloud server instance and the probes that watch it."""

    name: Name
    site: Name
    lb_server: str | None = None
    addresses: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    probes: list[Probe] = Field(min_length=1)
    require: Literal["all", "any"] = "all"
    rise: int | None = Field(default=None, ge=1, le=100)
    fall: int | None = Field(default=None, ge=1, le=100)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_address(item)
        return value

    @property
    def server_name(self) -> str:
        """The node's name inside its local load balancer."""
        return self.lb_server or self.name


Percent = Annotated[str, Field(pattern=r"^\d{1,3}%$")]


class Site(Frozen):
    """Nodes behind one local load balancer, published under one public address. Failover
    drains at most ``max_unavailable`` of its nodes at once (a percentage rounds up: 50% of 3
    nodes is 2) and keeps ``min_healthy`` in; ``check-config`` prints each site's figure."""

    name: Name
    address: str
    local_lb: Name | None = None
    backend: str | None = None  # overrides the load balancer's default backend
    # The floor: this many nodes stay in, whatever their verdicts (the last server is never
    # drained). Past it, down nodes are kept in and the site is in panic.
    min_healthy: int = Field(default=1, ge=0)
    # The cap: at most this many nodes out at once (Envoy's 50% panic threshold, as a count). A
    # percentage of the site's nodes rounds UP, as a Kubernetes PodDisruptionBudget's does: 50%
    # of 3 nodes is 2, of 4 is 2, of 5 is 3; 10% of 3 is 1 (only 0% drains none). With the
    # floor: 1 node drains none, 2 nodes one, 3 nodes two (the third stays in).
    max_unavailable: int | Percent = "50%"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("max_unavailable")
    @classmethod
    def _percent(cls, value: int | str) -> int | str:
        if isinstance(value, str) and int(value[:-1]) > 100:
            raise ValueError(f"{value} is more than 100%")
        return value

    def max_unavailable_count(self, size: int) -> int:
        """How many of ``size`` nodes the cap lets out at once (a percentage rounds up)."""
        if isinstance(self.max_unavailable, int):
            return self.max_unavailable
        return -(-size * int(self.max_unavailable[:-1]) // 100)  # ceiling, in integers

    def drain_budget(self, size: int) -> tuple[int, str]:
        """How many of ``size`` nodes may be drained at once, and the limit that sets it
        (``min_healthy`` or ``max_unavailable``): what the controller holds to."""
        by_floor = size - self.min_healthy
        by_cap = self.max_unavailable_count(size)
        limit = "min_healthy" if by_floor <= by_cap else "max_unavailable"
        return max(0, min(by_floor, by_cap)), limit


class Service(Frozen):
    """What a customer bought: one DNS name served by one or more sites."""

    name: Name
    sites: list[Name] = Field(min_length=1)
    global_lb: Name | None = None
    record: str | None = None


# --- load balancers -------------------------------------------------------------------------


class SecretRef(Frozen):
    """A secret read from a file or an environment variable, never written in the config."""

    secret_file: Path | None = None
    secret_env: str | None = None


class HAProxyLB(Frozen):
    """HAProxy's runtime API over its stats socket (unix path) or a TCP address."""

    type: Literal["haproxy"]
    socket: str | None = None
    address: Address | None = None
    backend: str
    mode: Literal["maint", "drain"] = "maint"
    timeout: Duration = 2.0


class TsigKey(SecretRef):
    """A TSIG key: its name, algorithm and (base64) secret."""

    name: str
    algorithm: Literal["hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha1", "hmac-md5"] = (
        "hmac-sha256"
    )


class Rfc2136LB(Frozen):
    """DNS dynamic updates (RFC 2136) signed with TSIG, e.g. towards BIND."""

    type: Literal["rfc2136"]
    server: Address
    zone: str
    ttl: int = Field(default=30, ge=0, le=86400)
    timeout: Duration = 2.0
    tsig: TsigKey | None = None
    # The servers a traffic proof asks (``host:port``, port 53 if left out); empty: the zone's
    # NS set as the primary answers it. For servers the NS set does not name as reachable.
    proof_servers: list[DnsAddress] = Field(default_factory=list)


class PowerDnsLB(Frozen):
    """The PowerDNS Authoritative HTTP API."""

    type: Literal["powerdns"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    zone: str
    server_id: str = "localhost"
    ttl: int = Field(default=30, ge=0, le=86400)
    timeout: Duration = 2.0
    api_key: SecretRef
    # The DNS servers a traffic proof asks (``host:port``, port 53 if left out); empty: the
    # zone's NS set from the API, each name resolved by this host.
    proof_servers: list[DnsAddress] = Field(default_factory=list)


class RecordingLB(Frozen):
    """An in-process load balancer that only records: for demos without real servers."""

    type: Literal["recording"]


LoadBalancer = Annotated[
    HAProxyLB | Rfc2136LB | PowerDnsLB | RecordingLB, Field(discriminator="type")
]
LOCAL_LB_TYPES = frozenset({"haproxy", "recording"})
GLOBAL_LB_TYPES = frozenset({"rfc2136", "powerdns", "recording"})


class FailoverBrake(Frozen):
    """The brake on mass failure (as Kubernetes' node lifecycle controller slows evictions):
    when more than ``share`` of a site's nodes, or of the whole fleet's, go down within
    ``window``, drains in that scope slow to ``rate`` a minute (0: none beyond those already
    out) until no more than ``share`` of its nodes are down. Operator drains are never braked,
    a dead site still leaves DNS, and scopes of fewer than ``min_nodes`` nodes never brake.
    ``share: 1`` turns the brake off."""

    # More than this share of a scope's nodes going down within ``window`` engages the brake;
    # it holds while more than this share of them are down.
    share: Annotated[float, Field(gt=0, le=1)] = 0.5
    window: Annotated[Duration, Field(gt=0, le=3600)] = 60.0
    # Drains (and, for the fleet, site withdrawals) a minute while braked; 0 stops them.
    rate: Annotated[float, Field(ge=0, le=600)] = 0.0
    # Below 10 nodes the floor (min_healthy) and cap (max_unavailable) already bound what a
    # few failures take out, and holding drains there mostly keeps traffic on dead servers.
    min_nodes: Annotated[int, Field(ge=1)] = 10


class FailoverProof(Frozen):
    """Proof that traffic moved: after each applied action, nodevigil watches in the
    background until the traffic follows (a drained server's sessions end, a restored one
    takes new ones, every authoritative DNS server answers the new record set) and records
    when, or that it did not within ``timeout``. Only the leader watches."""

    enabled: bool = True
    # Long-lived sessions (WebSockets, downloads) may outlast this: the proof then says how
    # many were still open.
    timeout: Annotated[Duration, Field(gt=0, le=3600)] = 60.0
    # How often the load balancer's counters or the DNS servers are read while proving.
    interval: Annotated[Duration, Field(ge=0.05, le=60)] = 0.5

    @model_validator(mode="after")
    def _interval_within_timeout(self) -> FailoverProof:
        if self.interval >= self.timeout:
            raise ValueError("interval must be shorter than timeout")
        return self


class FailoverSettings(Frozen):
    """How the controller paces itself and holds recovering nodes and sites out."""

    cycle: Duration = 1.0
    hold_down: Duration = 30.0
    hold_down_max: Duration = 600.0
    site_hold_down: Duration = 30.0
    # Every operator drain is time-boxed: a drain without ``for`` ends after this, and a longer
    # ``for`` is refused (422), so a forgotten drain cannot keep capacity out for ever.
    drain_max: Annotated[Duration, Field(gt=0, le=365 * 86400)] = 86400.0
    brake: FailoverBrake = FailoverBrake()
    proof: FailoverProof = FailoverProof()
    # ``observe``: probe, judge, decide and open incidents as ever, but write nothing to any
    # load balancer and notify no customer (operator alerts still go, marked); the decisions
    # are logged and served as "would ...". ``run --observe`` forces it. A reload switches.
    mode: Literal["act", "observe"] = "act"


# --- daemon surfaces ------------------------------------------------------------------------


class ApiToken(Frozen):
    """A bearer token, stored as the sha256 hex digest of the token, never in clear."""

    name: Name
    role: Literal["admin", "read", "customer"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    customer: Name | None = None


class ApiTls(Frozen):
    """HTTPS for the API, /metrics and the health endpoints: the server's certificate and key,
    and with client_ca_file, mutual TLS (every client presents a certificate that CA signed).
    Read from a configuration file, the files are loaded as the daemon loads them at start, so
    check-config refuses a missing, unreadable or mismatched file with the reason."""

    cert_file: Path  # PEM, the server's certificate (and its chain)
    key_file: Path  # PEM, its unencrypted private key
    client_ca_file: Path | None = None  # PEM; set: clients without its certificate are refused

    @model_validator(mode="after")
    def _usable(self, info: ValidationInfo) -> ApiTls:
        cert, key = (_file_as_run_opens_it(p, info) for p in (self.cert_file, self.key_file))
        if cert is None or key is None:
            return self
        ca = self.client_ca_file and _file_as_run_opens_it(self.client_ca_file, info)
        try:
            server_context(cert, key, ca)  # what the daemon does with them at start
        except TlsFileError as exc:
            raise ValueError(str(exc)) from None
        return self


class Api(Frozen):
    """The HTTP API, /metrics, /healthz and /readyz; the address and limits apply at start.
    max_connections (default: a quarter of the descriptor limit, at most 256) caps the open
    connections: past it the oldest idle one is closed to make room. Idle keep-alive
    connections close after header_timeout."""

    listen: Address = "127.0.0.1:9470"
    tokens: list[ApiToken] = Field(default_factory=list)
    max_body: int = Field(default=1_048_576, ge=1024)  # bytes; a larger body is answered 413
    # A client must send a whole request head (line and headers) this soon after connecting or
    # after its previous response; an idle keep-alive connection is closed after as long.
    header_timeout: Annotated[Duration, Field(gt=0, le=3600)] = 10.0
    body_timeout: Annotated[Duration, Field(gt=0, le=3600)] = 10.0  # to receive a whole body
    max_header_size: int = Field(default=8190, ge=1024, le=65536)  # bytes per header line
    max_headers: int = Field(default=64, ge=16, le=1024)
    # Connections open at once. Past it the oldest idle one is closed for the new one (so
    # /healthz still gets in), or the new one when all are busy. Default: a quarter of the
    # descriptor limit, at most 256, so clients can never take the probes' descriptors.
    max_connections: int | None = Field(default=None, ge=8, le=1_000_000)
    tls: ApiTls | None = None  # HTTPS, optionally mutual TLS; applies at start
    # Set: /metrics needs "Authorization: Bearer <token>" with this sha256 hex digest (or an
    # admin or read token); unset, /metrics is open like /healthz. Follows a reload.
    metrics_token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class MqttTls(Frozen):
    """TLS towards the broker (``mqtts://``): the CA to trust, optionally a client certificate."""

    ca_file: Path | None = None  # default: the system's trusted CAs
    cert_file: Path | None = None  # a client certificate, for brokers that require one
    key_file: Path | None = None  # its private key (with cert_file)


class Mqtt(Frozen):
    """The MQTT broker the node agents publish their heartbeats to."""

    url: Annotated[str, Field(pattern=r"^mqtts?://")]
    topic_prefix: str = "nodevigil"
    username: str | None = None
    password: SecretRef | None = None
    tls: MqttTls | None = None  # only with mqtts://; default: the system's CAs, no client cert
    # The installation secret every node's agent key derives from (``nodevigil agent-key``).
    # Set, the daemon believes only heartbeats and wills signed with the node's key; unset,
    # any client that can publish to the broker can speak for any node.
    agent_secret: SecretRef | None = None
    max_clock_skew: Duration = Field(default=120.0, gt=0)  # agent vs daemon clock, new boots
    reconnect_grace: Duration | None = None  # default: each probe's max_silence + 15s


def _check_zone(value: str | None) -> str | None:
    if value is not None:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Shanghai)") from None
    return value


class Customer(Frozen):
    """A customer: the services it holds, its contingency plan, and the time zone its notices
    say times in (default: the billing ``timezone``)."""

    id: Name
    services: list[Name] = Field(default_factory=list)
    plan: Name | None = None
    timezone: Annotated[str | None, AfterValidator(_check_zone)] = None


class StatusPage(Frozen):
    """The public status page (``/status``): where customers reach it, linked from every
    customer notice (unset: notices carry no link), and how many days of history it shows."""

    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    history_days: int = Field(default=90, ge=1, le=366)


# --- incidents and notifications ------------------------------------------------------------


class WebhookNotifier(SecretRef):
    """An HTTP POST signed per the Standard Webhooks specification (secret in ``whsec_`` form)."""

    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Duration = 5.0
    headers: dict[str, str] = Field(default_factory=dict)


class SmtpServer(Frozen):
    """Where mail is handed over: plain, STARTTLS or implicit TLS, optionally with a login."""

    host: str
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    tls: bool = False  # implicit TLS (port 465); exclusive with starttls
    username: str | None = None
    password: SecretRef | None = None
    timeout: Duration = 10.0
    verify: bool = True
    ca_file: Path | None = None


class EmailNotifier(Frozen):
    """Plain-text mail with the incident's facts."""

    type: Literal["email"]
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)
    sender: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")] = "nodevigil@localhost"
    smtp: SmtpServer
    subject_prefix: str = "[nodevigil]"


class AlertmanagerNotifier(Frozen):
    """Alerts posted to Prometheus Alertmanager's v2 API; recoveries resolve them."""

    type: Literal["alertmanager"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Duration = 5.0
    labels: dict[str, str] = Field(default_factory=dict)
    resolve_after: Duration = 3600.0  # how long a one-shot event (lb.action, ...) stays firing
    firing_for: Duration = 7 * 86400.0  # how long a problem (node.down, ...) awaits its recovery


class MqttNotifier(Frozen):
    """Events published as JSON; ``url`` defaults to the top-level mqtt broker."""

    type: Literal["mqtt"]
    topic: Annotated[str, Field(min_length=1, pattern=r"^[^#+]+$")]
    url: Annotated[str, Field(pattern=r"^mqtts?://")] | None = None
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


Notifier = Annotated[
    WebhookNotifier | EmailNotifier | AlertmanagerNotifier | MqttNotifier,
    Field(discriminator="type"),
]


class PlanStep(Frozen):
    """Who is told, ``after`` the outage's start (``0s`` is at once; a reopened incident counts
    from its reopening)."""

    after: Duration = 0.0
    notify: list[Name] = Field(min_length=1)


class ContingencyPlan(Frozen):
    """Clause VIII.6: the ordered steps that tell a customer about a whole-service failure."""

    steps: list[PlanStep] = Field(min_length=1)
    on_resolve: list[Name] = Field(default_factory=list)
    repeat_every: Duration | None = None  # repeat the last step this often while still open


class AlertRoute(Frozen):
    """Operator alerts: events (a kind such as ``node.down``, or ``node.*``) and where they go."""

    events: list[Annotated[str, Field(pattern=r"^[a-z_]+(\.([a-z_]+|\*))?$|^\*$")]] = Field(
        min_length=1
    )
    notify: list[Name] = Field(min_length=1)
    subjects: list[str] = Field(default_factory=list)  # only these nodes/sites/services


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a UTC offset, e.g. 2026-12-01T02:00:00+08:00")
    return value


AwareTime = Annotated[datetime, AfterValidator(_aware)]


class MaintenanceWindow(Frozen):
    """Announced maintenance: customers are told it is maintenance and the time is excluded."""

    start: AwareTime
    end: AwareTime
    services: list[Name] = Field(min_length=1)
    note: str = ""


class Incidents(Frozen):
    """How incidents open, reopen and resolve."""

    reopen_window: Duration = 600.0  # a service failing again this soon reopens the incident


class Notifications(Frozen):
    """The durable outbox: retries with jittered exponential backoff until ``max_age``."""

    max_age: Duration = 86400.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 300.0
    concurrency: int = Field(default=4, ge=1, le=64)  # deliveries in flight per notifier


class Sla(Frozen):
    """The ledger's billing rules."""

    rounding: Literal["per-outage", "minute-buckets"] = "per-outage"
    settlement_delay: Duration = 86400.0


class MonitorSettings(Frozen):
    """How the monitor runs: probing shards across worker processes (every core probes)."""

    # Worker processes that probe and judge a shard of the nodes each (nodes with an mqtt
    # probe stay in the main process, beside the MQTT link). Unset: the number of cores for
    # fleets of 2,000 nodes and more, else 1. 1: the monitor runs in the main process.
    # Fixed at start (a reload keeps the running count).
    workers: int | None = Field(default=None, ge=1, le=64)


class Records(Frozen):
    """Clause IV.3: events, ledger records and the probe history are kept at least 90 days.
    The probe history (runs of equal results, for ``replay``) is saved every
    ``history_save_every``: a crash loses at most that much of it."""

    retention: Duration = 90 * 86400.0
    history_save_every: Annotated[Duration, Field(gt=0, le=3600)] = 30.0


class Database(Frozen):
    """Shared state in PostgreSQL, for a cluster of nodevigil hosts. Without this section the
    state lives in SQLite files under ``state_dir`` (one host, nothing else to run)."""

    # libpq URL without a password, e.g. postgresql://nodevigil@db1,db2/nodevigil?
    # target_session_attrs=read-write (several hosts: the first that takes writes is used).
    url: Annotated[str, Field(pattern=r"^postgres(ql)?://")]
    password_file: Path | None = None  # the password, read at start; or password_env
    password_env: str | None = None
    pool_size: int = Field(default=4, ge=1, le=64)  # connections kept open by this process
    connect_timeout: Annotated[Duration, Field(gt=0, le=300)] = 5.0  # per connection attempt

    @model_validator(mode="after")
    def _one_password_source(self) -> Database:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self


def _file_as_run_opens_it(value: Path, info: ValidationInfo) -> Path | None:
    """Where the daemon opens ``value`` (relative to the configuration file's directory), when
    the configuration is read from a file (check-config, the start, a reload); else None."""
    base_dir = (info.context or {}).get("base_dir")
    return None if base_dir is None else Path(base_dir) / value


class EtcdTls(Frozen):
    """TLS towards etcd: the CA to trust (required: nodevigil trusts only this CA for etcd,
    never the system's), and a client certificate with its key when etcd asks for one. Read
    from a configuration file, the files are loaded as the daemon loads them, so check-config
    refuses a missing, unreadable or mismatched file with the reason."""

    ca_file: Annotated[Path | None, Field(validate_default=True)] = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            if info.field_name == "ca_file":
                raise ValueError(
                    "required with tls: nodevigil trusts only this CA for etcd, never the "
                    "system's CAs"
                )
            return None
        path = _file_as_run_opens_it(value, info)
        if path is not None:
            try:
                with path.open("rb") as file:
                    file.read(1)
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        return value

    @model_validator(mode="after")
    def _usable(self, info: ValidationInfo) -> EtcdTls:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise ValueError(
                f"{missing}: required with the other: a client certificate needs its key"
            )
        assert self.ca_file is not None  # _readable refused its absence
        ca = _file_as_run_opens_it(self.ca_file, info)
        if ca is None:
            return self
        cert, key = (
            None if p is None else _file_as_run_opens_it(p, info)
            for p in (self.cert_file, self.key_file)
        )
        try:
            client_context(ca, cert, key)  # what the etcd client does with them at start
        except TlsFileError as exc:
            raise ValueError(str(exc)) from None
        return self


class Etcd(Frozen):
    """The etcd cluster that holds the leader lease (etcd v3 API). With ``tls`` every endpoint
    is ``https://``; ``username`` and ``password_file`` (etcd's own auth) go together, and the
    password file is read as the daemon reads it when check-config reads a file."""

    endpoints: Annotated[list[Annotated[str, Field(pattern=r"^https?://")]], Field(min_length=1)]
    prefix: str = "/nodevigil/"  # every key of this installation lives under it
    tls: EtcdTls | None = None
    username: str | None = None
    password_file: Path | None = None  # with username
    timeout: Annotated[Duration, Field(gt=0, le=60)] = 1.0  # per call, all endpoints tried

    @field_validator("password_file")
    @classmethod
    def _password_readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = None if value is None else _file_as_run_opens_it(value, info)
        if path is None:
            return value
        try:
            with path.open("rb") as file:
                raw = file.read(64 * 1024 + 1)  # the daemon's limit for a secret file
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        # The reasons never quote the content: it is the password.
        if len(raw) > 64 * 1024:
            raise ValueError(f"{path} is larger than 64 KiB: is it the right file?")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None
        if not text.strip():
            raise ValueError(f"{path} is empty: etcd would refuse the login")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Etcd:
        problems = []
        if self.tls is not None:
            problems += [
                f"endpoints[{i}]: {url!r} must be https:// with tls"
                for i, url in enumerate(self.endpoints)
                if not url.startswith("https://")
            ]
        if self.username is not None and self.password_file is None:
            problems.append("password_file: required with username (etcd's auth needs both)")
        if self.password_file is not None and self.username is None:
            problems.append("username: required with password_file (etcd's auth needs both)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Isolation(Frozen):
    """How a vantage judges that it is cut off itself (then it votes ``unknown`` for every
    node until it sees the network again)."""

    # Targets that should always answer: ``tcp://host:port`` or ``http(s)://host:port/path``
    # (any HTTP answer counts). Unset: the etcd endpoints and the other vantages' APIs.
    canaries: list[Annotated[str, Field(pattern=r"^(tcp|https?)://")]] | None = None
    # Isolated when this share or more of the canaries fail at once...
    canary_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    # ...or when more than this share of the nodes it judges are down while the other
    # vantages see them up (and at least min_nodes of them).
    share: Annotated[float, Field(gt=0, lt=1)] = 0.5
    min_nodes: Annotated[int, Field(ge=1)] = 3
    interval: Annotated[Duration, Field(gt=0, le=60)] = 1.0  # canary checks and judgement
    timeout: Annotated[Duration, Field(gt=0, le=60)] = 1.0  # per canary check


class Cluster(Frozen):
    """Several nodevigil hosts: every one probes and serves the API, only the holder of the
    leader lease in etcd acts. Needs ``database`` (the shared state)."""

    etcd: Etcd
    lease_ttl: Annotated[Duration, Field(ge=2, le=300)] = 5.0
    # How often the leader renews its lease and standbys look for a vacant one (default a
    # third of the TTL). renew_every + 2 x etcd.timeout must fit in lease_ttl (Patroni's rule).
    renew_every: Annotated[Duration, Field(gt=0)] | None = None
    # Vantage points that vote on every node (each host's ``vantage``). Unset: no voting,
    # the leader acts on its own probes' verdicts.
    vantages: Annotated[list[Name], Field(min_length=1)] | None = None
    # "down" votes needed to call a node down (and live votes needed to decide at all).
    # Default: a majority of the configured vantages, never of the live ones.
    quorum: Annotated[int, Field(ge=1)] | None = None
    isolation: Isolation = Isolation()
    # This host's API as the other hosts reach it (a canary for them). Unset: from
    # api.listen, unless that is a wildcard address.
    advertise: Annotated[str, Field(pattern=r"^https?://")] | None = None

    @model_validator(mode="after")
    def _votes(self) -> Cluster:
        if self.vantages is None:
            if self.quorum is not None:
                raise ValueError("quorum: needs vantages (the vantage points that vote)")
            return self
        if len(set(self.vantages)) != len(self.vantages):
            raise ValueError("vantages: every vantage must be named once")
        if self.quorum is not None and self.quorum > len(self.vantages):
            raise ValueError(
                f"quorum: {self.quorum} is more than the {len(self.vantages)} configured "
                "vantages: no node could ever be called down"
            )
        return self

    @model_validator(mode="after")
    def _timing(self) -> Cluster:
        renew = self.renew_every if self.renew_every is not None else self.lease_ttl / 3
        if renew + 2 * self.etcd.timeout > self.lease_ttl:
            raise ValueError(
                f"renew_every ({format_duration(renew)}) + 2 x etcd.timeout "
                f"({format_duration(self.etcd.timeout)}) must not exceed lease_ttl "
                f"({format_duration(self.lease_ttl)}): a leader could lose its lease between "
                "two renewals"
            )
        return self


class Config(Frozen):
    """The whole configuration file."""

    timezone: str = "UTC"
    state_dir: Path = Path("./state")
    vantage: Name = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "local")
    api: Api = Api()
    mqtt: Mqtt | None = None
    defaults: Defaults = Defaults()
    monitor: MonitorSettings = MonitorSettings()
    failover: FailoverSettings = FailoverSettings()
    load_balancers: dict[Name, LoadBalancer] = Field(default_factory=dict)
    sites: list[Site] = Field(default_factory=list)
    nodes: list[Node] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    customers: list[Customer] = Field(default_factory=list)
    notifiers: dict[Name, Notifier] = Field(default_factory=dict)
    contingency_plans: dict[Name, ContingencyPlan] = Field(default_factory=dict)
    alerts: list[AlertRoute] = Field(default_factory=list)
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)
    incidents: Incidents = Incidents()
    notifications: Notifications = Notifications()
    sla: Sla = Sla()
    status_page: StatusPage = StatusPage()
    records: Records = Records()
    database: Database | None = None  # PostgreSQL; unset: SQLite in state_dir
    cluster: Cluster | None = None  # several hosts, one leader (needs database)

    def node(self, name: str) -> Node | None:
        """The node called ``name``, if any."""
        return _named(self, "nodes", self.nodes).get(name)

    def site(self, name: str) -> Site | None:
        """The site called ``name``, if any."""
        return _named(self, "sites", self.sites).get(name)


# Config.node() and .site() by name, built once per configuration object (the decision code
# looks sites up for every service, every cycle). Kept beside the model, not in it: a private
# attribute would take part in ``==`` and be copied, stale, by ``model_copy``. An entry goes
# when its configuration is collected.
_NAMED: dict[tuple[int, str], tuple[weakref.ref[Config], dict[str, Any]]] = {}


def _named(config: Config, field: str, items: Sequence[Node] | Sequence[Site]) -> dict[str, Any]:
    key = (id(config), field)
    entry = _NAMED.get(key)
    if entry is not None and entry[0]() is config:
        return entry[1]
    index = {item.name: item for item in items}
    ref = weakref.ref(config, lambda _: _NAMED.pop(key, None))
    _NAMED[key] = (ref, index)
    return index
