"""Render the configuration reference from the schema itself, so it cannot drift from the code.

``python -m nodevigil.core.config.reference > docs/configuration.md``
"""

from __future__ import annotations

import textwrap
import types
import typing
from typing import Any, Literal, NamedTuple, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from nodevigil.core.config import schema
from nodevigil.core.durations import format_duration

HEADER = """# Configuration reference

Generated from `nodevigil/core/config/schema.py` by
`python -m nodevigil.core.config.reference`; a test fails when this file is out of date.
Durations are strings with a unit (`500ms`, `1s`, `10m`, `1h30m`, `90d`). Names match
`[A-Za-z0-9][A-Za-z0-9_.-]*`. Relative paths are relative to the configuration file.
`nodevigil check-config -c FILE` validates a file exactly as start-up does. Each section ends
with an example: a fragment of a configuration file, checked against the schema by a test. See
`configs/example.yaml` for a working example.
"""

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("top level", schema.Config),
    ("api", schema.Api),
    ("api.tokens[]", schema.ApiToken),
    ("api.tls", schema.ApiTls),
    ("mqtt", schema.Mqtt),
    ("mqtt.tls", schema.MqttTls),
    ("defaults", schema.Defaults),
    ("defaults.flap", schema.FlapDamping),
    ("monitor", schema.MonitorSettings),
    ("failover", schema.FailoverSettings),
    ("failover.brake", schema.FailoverBrake),
    ("failover.proof", schema.FailoverProof),
    ("sites[]", schema.Site),
    ("nodes[]", schema.Node),
    ("nodes[].probes[] type: http", schema.HttpProbe),
    ("nodes[].probes[] type: tcp", schema.TcpProbe),
    ("nodes[].probes[] type: tls", schema.TlsProbe),
    ("nodes[].probes[] type: dns", schema.DnsProbe),
    ("nodes[].probes[] type: icmp", schema.IcmpProbe),
    ("nodes[].probes[] type: mqtt", schema.MqttProbe),
    ("nodes[].probes[].limits (mqtt)", schema.ResourceLimits),
    ("services[]", schema.Service),
    ("customers[]", schema.Customer),
    ("load_balancers.NAME type: haproxy", schema.HAProxyLB),
    ("load_balancers.NAME type: rfc2136", schema.Rfc2136LB),
    ("load_balancers.NAME.tsig", schema.TsigKey),
    ("load_balancers.NAME type: powerdns", schema.PowerDnsLB),
    ("load_balancers.NAME type: recording", schema.RecordingLB),
    ("notifiers.NAME type: webhook", schema.WebhookNotifier),
    ("notifiers.NAME type: email", schema.EmailNotifier),
    ("notifiers.NAME.smtp (email)", schema.SmtpServer),
    ("notifiers.NAME type: alertmanager", schema.AlertmanagerNotifier),
    ("notifiers.NAME type: mqtt", schema.MqttNotifier),
    ("contingency_plans.NAME", schema.ContingencyPlan),
    ("contingency_plans.NAME.steps[]", schema.PlanStep),
    ("alerts[]", schema.AlertRoute),
    ("maintenance[]", schema.MaintenanceWindow),
    ("incidents", schema.Incidents),
    ("notifications", schema.Notifications),
    (
        "secrets (tsig, api_key, mqtt.password, mqtt.agent_secret, webhook, smtp.password)",
        schema.SecretRef,
    ),
    ("sla", schema.Sla),
    ("status_page", schema.StatusPage),
    ("records", schema.Records),
    ("database", schema.Database),
    ("cluster", schema.Cluster),
    ("cluster.etcd", schema.Etcd),
    ("cluster.etcd.tls", schema.EtcdTls),
]


class Example(NamedTuple):
    """A section's example: a fragment of a configuration file, and where the section's object is.

    ``path`` leads from the top of the fragment to the object (mapping keys and list indices);
    a test validates that object with the section's model and the fragment with ``Config``.
    """

    path: tuple[str | int, ...]
    text: str


def _example(*path: str | int, text: str) -> Example:
    return Example(path, textwrap.dedent(text).strip("\n"))


EXAMPLES: dict[str, Example] = {
    "top level": _example(
        text="""
        timezone: Asia/Shanghai              # billing-day boundaries for the SLA ledger
        state_dir: /var/lib/nodevigil
        vantage: ops-1                       # this monitor's name in every result
        api:
          listen: 127.0.0.1:9470
          tokens:
            - name: ops
              role: admin
              sha256: "91c16f0d6cc1bec3c3603972182a07c66ff4fa71618a975e963d6dbe42b6dd37"
        load_balancers:
          haproxy-sh: {type: haproxy, socket: /run/haproxy/admin.sock, backend: web}
        sites:
          - {name: sh, address: 203.0.113.10, local_lb: haproxy-sh}
        nodes:
          - name: sh-1
            site: sh
            probes:
              - {type: http, url: "http://10.10.1.11:8080/healthz"}
          - name: sh-2
            site: sh
            probes:
              - {type: http, url: "http://10.10.1.12:8080/healthz"}
        services:
          - {name: web, sites: [sh]}
        customers:
          - {id: acme, services: [web]}
        """,
    ),
    "api": _example(
        "api",
        text="""
        api:
          listen: 10.0.0.2:9470              # the API, /metrics, /healthz and /readyz
          max_body: 1048576                  # bytes; a larger body is refused (413)
          header_timeout: 10s                # to send a request's head; idle connections close
          body_timeout: 10s                  # to send a request's body (else 408)
          tokens:                            # sha256 digests of bearer tokens, never in clear
            - name: ops
              role: admin
              sha256: "91c16f0d6cc1bec3c3603972182a07c66ff4fa71618a975e963d6dbe42b6dd37"
        """,
    ),
    "api.tokens[]": _example(
        "api",
        "tokens",
        1,
        text="""
        api:
          tokens:
            - name: noc
              role: read
              sha256: "6039c0d8b3cfa73ed261ccd0f9f2fa8a46b3ad1e1e39b604f8fac2db0ee0484c"
            - name: acme-portal
              role: customer
              customer: acme                 # a customer token sees only its own customer
              sha256: "c695b42d79a2420ca858fe997c67cab0749a72f3875834c654113b9cb2219478"
        """,
    ),
    "api.tls": _example(
        "api",
        "tls",
        text="""
        api:
          listen: 0.0.0.0:9470
          tls:                               # HTTPS for the API, /metrics and health
            cert_file: /etc/nodevigil/tls/api.crt        # PEM, with its chain
            key_file: /etc/nodevigil/tls/api.key         # PEM, unencrypted
            client_ca_file: /etc/nodevigil/tls/clients.crt  # optional: mutual TLS
          # /metrics then needs this bearer token (sha256 hex), or an admin or read token
          metrics_token_sha256: "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        """,
    ),
    "mqtt": _example(
        "mqtt",
        text="""
        mqtt:
          url: mqtts://mqtt.example.net:8883
          topic_prefix: nodevigil
          username: nodevigil
          password: {secret_file: /etc/nodevigil/mqtt-password}
          tls: {ca_file: /etc/nodevigil/mqtt-ca.pem}
          agent_secret: {secret_file: /etc/nodevigil/agent-secret}  # signed heartbeats and wills
          max_clock_skew: 2m                 # how far an agent's clock may be from ours
          reconnect_grace: 30s               # after the daemon reconnects, before silence counts
        """,
    ),
    "mqtt.tls": _example(
        "mqtt",
        "tls",
        text="""
        mqtt:
          url: mqtts://mqtt.example.net:8883
          tls:
            ca_file: /etc/nodevigil/mqtt-ca.pem  # default: the system's trusted CAs
            cert_file: /etc/nodevigil/mqtt-client.pem  # only if the broker asks for one
            key_file: /etc/nodevigil/mqtt-client.key
        """,
    ),
    "defaults": _example(
        "defaults",
        text="""
        defaults:
          interval: 1s                       # how often each probe runs
          timeout: 900ms                     # < interval; unset: 90 % of it, 900ms at most
          rise: 2                            # consecutive successes before a probe counts as up
          fall: 3                            # consecutive failures before it counts as down
          attempts: 5                        # hedged tries inside one timeout
          flap: {window: 2m, max_changes: 6, hold: 1m}
        """,
    ),
    "defaults.flap": _example(
        "defaults",
        "flap",
        text="""
        defaults:
          flap:
            window: 5m
            max_changes: 4                   # a 5th up/down change within 5m holds the node down
            hold: 2m                         # until it has stayed up this long
        """,
    ),
    "monitor": _example(
        "monitor",
        text="""
        monitor:
          workers: 2                         # probing processes; unset: one per core
        """,
    ),
    "failover": _example(
        "failover",
        text="""
        failover:
          cycle: 1s
          hold_down: 30s                     # a recovered node stays out this long, doubled
          hold_down_max: 10m                 # on each flap up to this
          site_hold_down: 1m                 # a recovered site waits this long to return to DNS
          mode: observe                      # decide and log only: no LB write, no customer told
        """,
    ),
    "failover.brake": _example(
        "failover",
        "brake",
        text="""
        failover:
          brake:                             # when much of a site or the fleet fails at once
            share: 0.5                       # more than half of a scope's nodes down...
            window: 1m                       # ...within a minute holds its drains
            rate: 1                          # but lets one through a minute (default 0: none)
            min_nodes: 10                    # smaller scopes never brake
        """,
    ),
    "failover.proof": _example(
        "failover",
        "proof",
        text="""
        failover:
          proof:                             # after each action, watch the traffic move
            enabled: true
            timeout: 2m                      # a drained server's sessions may take this long
            interval: 500ms                  # read HAProxy's counters / the DNS servers so often
        """,
    ),
    "sites[]": _example(
        "sites",
        0,
        text="""
        sites:
          - name: sh
            address: 203.0.113.10            # published in the DNS records of its services
            local_lb: haproxy-sh
            backend: web-sh                  # instead of the load balancer's backend
            min_healthy: 2                   # the floor: never fewer in (default 1)
            max_unavailable: 50%             # the cap, rounded up: 2 of 3 nodes, 3 of 5
        """,
    ),
    "nodes[]": _example(
        "nodes",
        0,
        text="""
        nodes:
          - name: sh-1
            site: sh
            lb_server: web-sh-1              # its server name in HAProxy (default: the name)
            addresses: [10.10.1.11]
            labels: {role: web, rack: r12}
            require: all                     # down when any probe is down; any: when all are
            rise: 3
            fall: 2
            probes:
              - {type: http, url: "http://10.10.1.11:8080/healthz"}
              - {type: tcp, address: "10.10.1.11:443"}
        """,
    ),
    "nodes[].probes[] type: http": _example(
        "nodes",
        0,
        "probes",
        0,
        text="""
        nodes:
          - name: sh-1
            site: sh
            probes:
              - type: http
                name: health
                url: "https://10.10.1.11/healthz"
                expect_status: [200, 204]
                body_match: '"status": *"ok"'  # a regular expression searched in the body
                max_latency: 300ms
                headers: {Host: www.example.net}
                tls_verify: false            # the certificate names www.example.net, not the IP
        """,
    ),
    "nodes[].probes[] type: tcp": _example(
        "nodes",
        0,
        "probes",
        0,
        text="""
        nodes:
          - name: sh-1
            site: sh
            probes:
              - {type: tcp, name: https-port, address: "10.10.1.11:443", timeout: 300ms}
        """,
    ),
    "nodes[].probes[] type: tls": _example(
        "nodes",
        0,
        "probes",
        0,
        text="""
        nodes:
          - name: sh-1
            site: sh
            probes:
              - type: tls
                address: "10.10.1.11:443"
                server_name: www.example.net
                min_days_left: 21
                ca_file: /etc/nodevigil/internal-ca.pem
                interval: 1m
                timeout: 5s
        """,
    ),
    "nodes[].probes[] type: dns": _example(
        "nodes",
        0,
        "probes",
        0,
        text="""
        nodes:
          - name: sh-ns1
            site: sh
            probes:
              - type: dns
                server: 10.10.1.53           # port 53 unless given
                query: www.example.net.
                record_type: A
                expect: [203.0.113.10, 198.51.100.10]
        """,
    ),
    "nodes[].probes[] type: icmp": _example(
        "nodes",
        0,
        "probes",
        0,
        text="""
        nodes:
          - name: sh-1
            site: sh
            probes:
              - {type: icmp, address: 10.10.1.11, count: 3, interval: 5s, timeout: 2s}
        """,
    ),
    "nodes[].probes[] type: mqtt": _example(
        "nodes",
        0,
        "probes",
        0,
        text="""
        mqtt: {url: "mqtt://10.0.0.2:1883"}  # an mqtt probe needs the broker
        nodes:
          - name: sh-1
            site: sh
            probes:
              - type: mqtt
                max_silence: 10s
                agent: web-sh-1              # the agent runs with --node web-sh-1
                limits: {disk_percent: 90, memory_percent: 95}
        """,
    ),
    "nodes[].probes[].limits (mqtt)": _example(
        "nodes",
        0,
        "probes",
        0,
        "limits",
        text="""
        nodes:
          - name: sh-1
            site: sh
            probes:
              - type: mqtt
                limits:
                  disk_percent: 90
                  memory_percent: 95
                  cpu_percent: 98
                  load1: 16
        """,
    ),
    "services[]": _example(
        "services",
        0,
        text="""
        services:
          - name: web
            sites: [sh, bj]
            global_lb: dns
            record: www                      # relative to the load balancer's zone
        """,
    ),
    "customers[]": _example(
        "customers",
        0,
        text="""
        customers:
          - id: acme
            services: [web]
            plan: gold                       # a contingency_plans entry
            timezone: Asia/Shanghai          # its notices' times; default: the top-level timezone
        """,
    ),
    "load_balancers.NAME type: haproxy": _example(
        "load_balancers",
        "haproxy-sh",
        text="""
        load_balancers:
          haproxy-sh:
            type: haproxy
            socket: /run/haproxy/admin.sock  # or address: "10.10.0.5:9999"; exactly one
            backend: web
            mode: drain                      # put failed nodes in drain instead of maint
            timeout: 2s
        """,
    ),
    "load_balancers.NAME type: rfc2136": _example(
        "load_balancers",
        "dns",
        text="""
        load_balancers:
          dns:
            type: rfc2136
            server: "10.10.0.53:53"
            zone: example.net.
            ttl: 30
            tsig:
              name: nodevigil.
              algorithm: hmac-sha256
              secret_file: /etc/nodevigil/tsig-nodevigil
        """,
    ),
    "load_balancers.NAME.tsig": _example(
        "load_balancers",
        "dns",
        "tsig",
        text="""
        load_balancers:
          dns:
            type: rfc2136
            server: "10.10.0.53:53"
            zone: example.net.
            tsig:
              name: nodevigil-2026b.
              algorithm: hmac-sha512
              secret_file: /etc/nodevigil/tsig-nodevigil-2026b  # the base64 secret from BIND
        """,
    ),
    "load_balancers.NAME type: powerdns": _example(
        "load_balancers",
        "pdns",
        text="""
        load_balancers:
          pdns:
            type: powerdns
            url: http://10.10.0.53:8081
            server_id: localhost
            zone: example.net.
            ttl: 30
            api_key: {secret_file: /etc/nodevigil/powerdns-api-key}
        """,
    ),
    "load_balancers.NAME type: recording": _example(
        "load_balancers",
        "demo",
        text="""
        load_balancers:
          demo: {type: recording}
        sites:
          - {name: local, address: 127.0.0.1, local_lb: demo}
        """,
    ),
    "notifiers.NAME type: webhook": _example(
        "notifiers",
        "acme-webhook",
        text="""
        notifiers:
          acme-webhook:
            type: webhook
            url: https://status.acme.example.com/hooks/provider
            secret_file: /etc/nodevigil/webhook-acme  # holds whsec_...
            timeout: 5s
            headers: {X-Provider: example.net}
        """,
    ),
    "notifiers.NAME type: email": _example(
        "notifiers",
        "acme-mail",
        text="""
        notifiers:
          acme-mail:
            type: email
            to: [ops@acme.example]
            sender: nodevigil@example.net
            subject_prefix: "[example.net]"
            smtp: {host: smtp.example.net, port: 587, starttls: true}
        """,
    ),
    "notifiers.NAME.smtp (email)": _example(
        "notifiers",
        "acme-mail",
        "smtp",
        text="""
        notifiers:
          acme-mail:
            type: email
            to: [ops@acme.example]
            smtp:
              host: smtp.example.net
              port: 465
              tls: true                      # implicit TLS; or starttls: true on port 587
              username: nodevigil
              password: {secret_env: NODEVIGIL_SMTP_PASSWORD}
              timeout: 10s
        """,
    ),
    "notifiers.NAME type: alertmanager": _example(
        "notifiers",
        "ops-am",
        text="""
        notifiers:
          ops-am:
            type: alertmanager
            url: http://127.0.0.1:9093
            labels: {team: noc}
            resolve_after: 1h                # how long one-shot events (lb.action) stay firing
            firing_for: 7d                   # how long problems (node.down) await recovery
        """,
    ),
    "notifiers.NAME type: mqtt": _example(
        "notifiers",
        "event-bus",
        text="""
        notifiers:
          event-bus:
            type: mqtt
            topic: nodevigil/events
            url: mqtts://mqtt.example.net:8883  # default: the top-level mqtt broker
            qos: 1
            retain: false
        """,
    ),
    "contingency_plans.NAME": _example(
        "contingency_plans",
        "gold",
        text="""
        contingency_plans:
          gold:
            steps:
              - {after: 0s, notify: [acme-webhook, acme-mail]}
              - {after: 15m, notify: [acme-phone-bridge]}
            on_resolve: [acme-webhook, acme-mail]
            repeat_every: 1h                 # repeat the last step while the incident stays open
        """,
    ),
    "contingency_plans.NAME.steps[]": _example(
        "contingency_plans",
        "gold",
        "steps",
        1,
        text="""
        contingency_plans:
          gold:
            steps:
              - after: 0s
                notify: [acme-webhook, acme-mail]
              - after: 15m                   # still unavailable after 15 minutes: escalate
                notify: [acme-phone-bridge]
        """,
    ),
    "alerts[]": _example(
        "alerts",
        1,
        text="""
        alerts:
          - events: [node.down, node.up, site.*, failover.failed]
            notify: [ops-am]
          - events: [node.*]
            notify: [ops-mail]
            subjects: [sh-1, sh-2]           # only events about these nodes
        """,
    ),
    "maintenance[]": _example(
        "maintenance",
        0,
        text="""
        maintenance:
          - start: "2026-12-01T02:00:00+08:00"
            end: "2026-12-01T03:00:00+08:00"
            services: [web]
            note: kernel upgrade
        """,
    ),
    "incidents": _example(
        "incidents",
        text="""
        incidents:
          reopen_window: 10m                 # a relapse this soon reopens the same incident
        """,
    ),
    "notifications": _example(
        "notifications",
        text="""
        notifications:
          max_age: 24h
          backoff_initial: 1s
          backoff_max: 5m
          concurrency: 4                     # deliveries in flight per notifier
        """,
    ),
    "secrets (tsig, api_key, mqtt.password, mqtt.agent_secret, webhook, smtp.password)": _example(
        "mqtt",
        "password",
        text="""
        mqtt:
          url: mqtts://mqtt.example.net:8883
          username: nodevigil
          password:
            secret_env: NODEVIGIL_MQTT_PASSWORD  # or secret_file: /etc/nodevigil/mqtt-password
        """,
    ),
    "sla": _example(
        "sla",
        text="""
        sla:
          rounding: minute-buckets
          settlement_delay: 2d
        """,
    ),
    "status_page": _example(
        "status_page",
        text="""
        status_page:
          url: https://status.provider.example/  # linked from every customer notice
          history_days: 90                   # daily availability bars per service
        """,
    ),
    "records": _example(
        "records",
        text="""
        records:
          retention: 400d                    # at least 90d (clause IV.3)
          history_save_every: 30s            # a crash loses at most this much probe history
        """,
    ),
    "database": _example(
        "database",
        text="""
        database:                            # state in PostgreSQL instead of state_dir's files
          # libpq URL, never with a password; several hosts: the one taking writes is used
          url: postgresql://nodevigil@db1.example,db2.example/nodevigil?target_session_attrs=read-write
          password_file: /etc/nodevigil/db.password  # or password_env: NODEVIGIL_DB_PASSWORD
          pool_size: 4                       # connections this process keeps open
          connect_timeout: 5s                # per connection attempt
        """,
    ),
    "cluster": _example(
        "cluster",
        text="""
        database: {url: "postgresql://nodevigil@db1.example/nodevigil"}  # required by cluster
        cluster:                             # several hosts; only the lease holder acts
          etcd:
            endpoints: ["https://etcd1:2379", "https://etcd2:2379", "https://etcd3:2379"]
          lease_ttl: 5s                      # a dead leader's successor acts within about this
          renew_every: 1500ms                # renew_every + 2 x etcd.timeout <= lease_ttl
        """,
    ),
    "cluster.etcd": _example(
        "cluster",
        "etcd",
        text="""
        database: {url: "postgresql://nodevigil@db1.example/nodevigil"}
        cluster:
          etcd:
            endpoints: ["https://etcd1:2379", "https://etcd2:2379", "https://etcd3:2379"]
            prefix: /nodevigil/prod/         # this installation's keys
            username: nodevigil              # etcd's own auth, with password_file
            password_file: /etc/nodevigil/etcd.password
            timeout: 1s                      # per call, every endpoint tried
        """,
    ),
    "cluster.etcd.tls": _example(
        "cluster",
        "etcd",
        "tls",
        text="""
        database: {url: "postgresql://nodevigil@db1.example/nodevigil"}
        cluster:
          etcd:
            endpoints: ["https://etcd1:2379"]
            tls:
              ca_file: /etc/nodevigil/etcd-ca.pem
              cert_file: /etc/nodevigil/etcd-client.pem   # when etcd asks for client certificates
              key_file: /etc/nodevigil/etcd-client.key
        """,
    ),
}

_DURATION_FIELDS = {
    "interval",
    "timeout",
    "max_latency",
    "max_silence",
    "window",
    "hold",
    "cycle",
    "hold_down",
    "hold_down_max",
    "site_hold_down",
    "lease_ttl",
    "renew_every",
    "drain_max",
    "reconnect_grace",
    "max_clock_skew",
    "settlement_delay",
    "retention",
    "history_save_every",
    "resolve_after",
    "firing_for",
    "after",
    "repeat_every",
    "reopen_window",
    "max_age",
    "backoff_initial",
    "backoff_max",
    "header_timeout",
    "body_timeout",
    "connect_timeout",
}


def _type_name(annotation: Any, field: str) -> str:
    if field in _DURATION_FIELDS:
        return "duration"
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], field)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a, field) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(names))
    if origin is list:
        return f"list of {_type_name(args[0], field)}"
    if origin is dict:
        return f"map of {_type_name(args[1], field)}"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping"
        return {
            "str": "string",
            "int": "integer",
            "float": "number",
            "bool": "boolean",
            "Path": "path",
        }.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(name: str, info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        if name == "vantage":
            return "the host name"
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is PydanticUndefined or value is None:
        return "—"
    if isinstance(value, BaseModel):
        return "see below"
    if name in _DURATION_FIELDS and isinstance(value, int | float):
        return f"`{format_duration(float(value))}`"
    return f"`{value}`"


def render() -> str:
    """The whole reference as Markdown."""
    out = [HEADER]
    for title, model in SECTIONS:
        out.append(f"\n## {title}\n\n{(model.__doc__ or '').strip()}\n")
        out.append("| key | type | default |\n| --- | --- | --- |")
        for name, info in model.model_fields.items():
            if name == "type":
                continue
            out.append(
                f"| `{name}` | {_type_name(info.annotation, name)} | {_default(name, info)} |"
            )
        out.append(f"\nExample:\n\n```yaml\n{EXAMPLES[title].text}\n```")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
