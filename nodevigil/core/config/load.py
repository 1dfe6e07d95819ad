"""Parse the YAML once, validate everything, and report every problem with its path."""

from __future__ import annotations

import math
import os
import re
import zoneinfo
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from nodevigil.core.config.salvage import reference_problems
from nodevigil.core.config.schema import (
    GLOBAL_LB_TYPES,
    LOCAL_LB_TYPES,
    Config,
    Defaults,
    Node,
    ProbeBase,
    SecretRef,
)
from nodevigil.core.config.secrets import MAX_SECRET_BYTES, read_secret, secret_problems
from nodevigil.core.config.yamlfile import YamlProblem, read_yaml
from nodevigil.core.durations import format_duration
from nodevigil.core.errors import ConfigError
from nodevigil.core.events import kind_matches

# read_secret and MAX_SECRET_BYTES live in secrets.py (one implementation); kept importable here.
__all__ = ["MAX_SECRET_BYTES", "load_config", "parse_config", "probe_timeout", "read_secret"]

MIN_RETENTION = 90 * 86400.0  # clause IV.3
MAX_PROBLEM = 300  # characters: a 5,000-character value is shown by its ends
# Durations that must not be 0s: a zero interval or timeout would busy-loop or fail every probe,
# and a probe's ``interval: 0s`` would otherwise silently fall back to the default.
_POSITIVE_DURATIONS = frozenset(
    {"interval", "timeout", "cycle", "max_silence", "backoff_initial", "backoff_max"}
)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def load_config(
    path: str | os.PathLike[str],
    *,
    event_kinds: Collection[str] | None = None,
    secrets: bool = False,
) -> Config:
    """Read, parse and validate a configuration file; raise ConfigError listing every problem.

    ``event_kinds`` are the kinds alert routes may name (the application passes every
    package's, ``nodevigil.app.kinds``); without them the routes' events are not checked.
    With ``secrets`` every secret is read and checked as the start uses it (``run`` and
    ``check-config``; commands that only talk to the API need no access to the secrets).
    """
    file = Path(path)
    try:
        data = read_yaml(file)
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source=str(file)) from None
    except YamlProblem as exc:
        raise ConfigError([_clean(str(exc))], source=str(file)) from None
    if data is None:
        raise ConfigError(["the file is empty (or holds only comments)"], source=str(file))
    return parse_config(
        data,
        source=str(file),
        base_dir=file.resolve().parent,
        event_kinds=event_kinds,
        secrets=secrets,
    )


def parse_config(
    data: Any,
    *,
    source: str = "",
    base_dir: Path | None = None,
    event_kinds: Collection[str] | None = None,
    secrets: bool = False,
) -> Config:
    """Validate already-loaded YAML data into a Config, resolving defaults and relative paths.

    Every problem is reported in one pass: schema errors, then what the cross-reference checks
    (and, with ``secrets``, the secrets' checks) find in the rest of the configuration."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"the file must hold a mapping of keys, not a {_yaml_kind(data)}"], source=source
        )
    try:
        # With ``secrets`` (run, check-config) and a base directory (a configuration file), the
        # TLS and password files the daemon opens at start are opened here too, relative to it,
        # so check-config refuses what the start would; other commands never touch them.
        files_from = base_dir if secrets else None
        config = Config.model_validate(data, context={"base_dir": files_from})
    except ValidationError as exc:
        problems = [_clean(p) for p in _schema_problems(exc, data)]

        def checks(valid: Config) -> Iterator[str]:
            yield from _semantic_problems(valid, event_kinds)
            if secrets:
                yield from secret_problems(valid, base_dir)

        problems += [_clean(p) for p in reference_problems(data, exc, base_dir, checks)]
        raise ConfigError(problems, source=source) from None
    problems = [_clean(p) for p in _semantic_problems(config, event_kinds)]
    if secrets:
        problems += [_clean(p) for p in secret_problems(config, base_dir)]
    if problems:
        raise ConfigError(problems, source=source)
    return _resolve(config, base_dir)


def _yaml_kind(data: Any) -> str:
    if isinstance(data, list):
        return "list"
    if isinstance(data, str):
        return "string"
    return "single value"


def _clean(problem: str) -> str:
    """One printable line: control characters escaped, a very long value cut in the middle."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in problem)
    if len(text) > MAX_PROBLEM:
        keep = MAX_PROBLEM // 2
        text = f"{text[:keep]} ... {text[-keep:]}"
    return text


def _schema_problems(exc: ValidationError, data: Any) -> Iterator[str]:
    for error in exc.errors(include_url=False):
        path = _format_path(error["loc"], data)
        message = _MESSAGES.get(error["type"], error["msg"])
        if error["type"] in ("union_tag_not_found", "union_tag_invalid"):
            path, message = _union_tag_problem(path, error)
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        yield f"{path}: {message}" if path else message


def _union_tag_problem(path: str, error: ErrorDetails) -> tuple[str, str]:
    """An object's ``type`` picks its kind: name that key, and the kinds there are."""
    ctx = error.get("ctx", {})
    key = str(ctx.get("discriminator", "type")).strip("'")
    if error["type"] == "union_tag_invalid":
        return f"{path}.{key}", f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    if isinstance(error["input"], dict):
        return f"{path}.{key}", "required key is missing"
    return path, "must be a mapping of keys"


def _format_path(loc: Sequence[int | str], data: Any) -> str:
    """Render a pydantic location as ``nodes[2].probes[0].timeout``, skipping union tags."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and _is_union_tag(node, part):
            continue  # pydantic names the chosen union member; the operator never wrote it
        if part == "[key]":  # pydantic's name for a mapping's key, not its value
            out += " (the key)"
            continue
        if _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:  # a key with dots, spaces or control characters: quoted, so the path stays clear
            out += f"[{part!r}]"
        node = node.get(part) if isinstance(node, dict) else None
    return out


def _is_union_tag(node: dict[str, Any], part: str) -> bool:
    return node.get("type") == part or part.startswith(("function-", "str", "int", "float"))


def _duplicates(names: Iterable[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def _semantic_problems(config: Config, event_kinds: Collection[str] | None) -> Iterator[str]:
    """Cross-references and relations the schema alone cannot express."""
    try:
        zoneinfo.ZoneInfo(config.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        yield f"timezone: {config.timezone!r} is not an IANA time zone (e.g. Asia/Shanghai)"
    yield from _field_problems(config)
    if config.records.retention < MIN_RETENTION:
        yield (
            f"records.retention: {format_duration(config.records.retention)} is shorter than "
            "the 90 days clause IV.3 requires"
        )
    yield from _fleet_problems(config)
    yield from _lb_problems(config)
    yield from _people_problems(config)
    yield from _notification_problems(config, event_kinds)
    if config.cluster is not None and config.database is None:
        yield "cluster: needs a database section (the hosts share their state in PostgreSQL)"
    yield from _lease_problems(config)
    cluster = config.cluster
    if cluster is not None and cluster.vantages and config.vantage not in cluster.vantages:
        yield (
            f"vantage: {config.vantage!r} is not one of cluster.vantages "
            f"({', '.join(cluster.vantages)}): this host's votes would not count"
        )


def _lease_problems(config: Config) -> Iterator[str]:
    """In a cluster a command is sent only while the lease has its timeout left: a load
    balancer timeout longer than a renewed lease ever has left would never be sent."""
    cluster = config.cluster
    if cluster is None:
        return
    renew = cluster.renew_every if cluster.renew_every is not None else cluster.lease_ttl / 3
    margin = min(cluster.lease_ttl / 10, cluster.etcd.timeout)  # as the leader lease keeps it
    room = cluster.lease_ttl - margin - renew
    for name, lb in config.load_balancers.items():
        timeout = getattr(lb, "timeout", None)
        if isinstance(timeout, float) and timeout > room:
            yield (
                f"load_balancers.{name}.timeout: {format_duration(timeout)} does not fit in the "
                f"leader lease: commands are sent only while this much of it is left, and at "
                f"most {format_duration(room)} ever is (lease_ttl - renew_every - margin)"
            )


def _field_problems(config: Config) -> Iterator[str]:
    """Checks on single values wherever they appear in the configuration."""
    for path, name, value in _fields(config, ""):
        if isinstance(value, float):
            if not math.isfinite(value):  # ``999...9d`` overflows to infinity
                yield f"{path}: {'too large' if value > 0 else 'not a finite number'}"
            elif value == 0 and name in _POSITIVE_DURATIONS:
                yield f"{path}: must be longer than 0s"
        elif name == "url" and isinstance(value, str) and _has_password(value):
            # II.2/VI.7: secrets come from files or the environment, never the configuration
            # (which is copied, versioned and shown), nor a URL that may end up in a log line.
            yield f"{path}: holds a password; remove it (secrets never go in the configuration)"


def _fields(model: BaseModel, where: str) -> Iterator[tuple[str, str, Any]]:
    """The fields of ``model`` and of the objects inside it that _field_problems checks
    (floats and urls): (path, name, value). A fleet holds ~500,000 fields; the path of each
    is only written out when it is one of those."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, float) or (name == "url" and isinstance(value, str)):
            yield (f"{where}.{name}" if where else name), name, value
        elif isinstance(value, BaseModel):
            yield from _fields(value, f"{where}.{name}" if where else name)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _fields(item, f"{where}.{name}[{i}]" if where else f"{name}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, BaseModel):
                    yield from _fields(item, f"{where}.{name}.{key}" if where else f"{name}.{key}")


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:  # an unparsable URL is the probe's or notifier's problem, not a secret
        return False


def _fleet_problems(config: Config) -> Iterator[str]:
    sites = {s.name for s in config.sites}
    for kind, names in (
        ("sites", [s.name for s in config.sites]),
        ("nodes", [n.name for n in config.nodes]),
        ("services", [s.name for s in config.services]),
    ):
        for dup in sorted(_duplicates(names)):
            yield f"{kind}: the name {dup!r} is used more than once"
    for i, node in enumerate(config.nodes):
        where = f"nodes[{i}]"
        if node.site not in sites:
            yield f"{where}.site: no site is called {node.site!r}"
        labels = [p.label for p in node.probes]
        for dup in sorted(_duplicates(labels)):
            yield f"{where}.probes: two probes are called {dup!r}; give them distinct names"
        for j, probe in enumerate(node.probes):
            interval = probe.interval or config.defaults.interval
            timeout = probe_timeout(probe, config.defaults)
            if timeout >= interval:
                yield (
                    f"{where}.probes[{j}].timeout: {format_duration(timeout)} is not shorter "
                    f"than interval {format_duration(interval)}"
                )
            if probe.type == "mqtt" and config.mqtt is None:
                yield f"{where}.probes[{j}]: an mqtt probe needs the top-level mqtt section"
    servers: dict[tuple[str, str], str] = {}
    for node in config.nodes:
        key = (node.site, node.server_name)
        if key in servers:
            yield (
                f"nodes: {node.name!r} and {servers[key]!r} share lb_server "
                f"{node.server_name!r} in site {node.site!r}"
            )
        servers[key] = node.name
    sizes = Counter(n.site for n in config.nodes)
    for i, site in enumerate(config.sites):
        size = sizes[site.name]
        if size and site.min_healthy > size:
            yield f"sites[{i}].min_healthy: {site.min_healthy} is more than its {size} nodes"
    for i, service in enumerate(config.services):
        for j, site_name in enumerate(service.sites):
            if site_name not in sites:
                yield f"services[{i}].sites[{j}]: no site is called {site_name!r}"
        if len(service.sites) > 1 and service.global_lb is None:
            yield f"services[{i}].global_lb: a service on several sites needs a global_lb"
        if service.global_lb is not None and service.record is None:
            yield f"services[{i}].record: a service behind a global_lb needs its DNS record"


def _lb_problems(config: Config) -> Iterator[str]:
    lbs = config.load_balancers
    for i, site in enumerate(config.sites):
        if site.local_lb is None:
            continue
        lb = lbs.get(site.local_lb)
        if lb is None:
            yield f"sites[{i}].local_lb: no load balancer is called {site.local_lb!r}"
        elif lb.type not in LOCAL_LB_TYPES:
            yield f"sites[{i}].local_lb: {site.local_lb!r} is a {lb.type}, not a local one"
    for i, service in enumerate(config.services):
        if service.global_lb is None:
            continue
        lb = lbs.get(service.global_lb)
        if lb is None:
            yield f"services[{i}].global_lb: no load balancer is called {service.global_lb!r}"
        elif lb.type not in GLOBAL_LB_TYPES:
            yield f"services[{i}].global_lb: {service.global_lb!r} is a {lb.type}, not a global one"
    for name, lb in lbs.items():
        if lb.type == "haproxy" and (lb.socket is None) == (lb.address is None):
            yield f"load_balancers.{name}: give exactly one of socket or address"
        if lb.type == "rfc2136" and lb.tsig is not None:
            yield from _secret_problems(f"load_balancers.{name}.tsig", lb.tsig)
        if lb.type == "powerdns":
            yield from _secret_problems(f"load_balancers.{name}.api_key", lb.api_key)


def _people_problems(config: Config) -> Iterator[str]:
    services = {s.name for s in config.services}
    customers = {c.id for c in config.customers}
    for dup in sorted(_duplicates(c.id for c in config.customers)):
        yield f"customers: the id {dup!r} is used more than once"
    for i, customer in enumerate(config.customers):
        for j, service in enumerate(customer.services):
            if service not in services:
                yield f"customers[{i}].services[{j}]: no service is called {service!r}"
    for dup in sorted(_duplicates(t.name for t in config.api.tokens)):
        yield f"api.tokens: the name {dup!r} is used more than once"
    for i, token in enumerate(config.api.tokens):
        if token.role == "customer" and token.customer is None:
            yield f"api.tokens[{i}].customer: a customer token must name a configured customer"
        elif token.role == "customer" and token.customer not in customers:
            yield f"api.tokens[{i}].customer: no customer is called {token.customer!r}"
        if token.role != "customer" and token.customer is not None:
            yield f"api.tokens[{i}].customer: only a customer token names a customer"
    if config.mqtt is not None and config.mqtt.password is not None:
        yield from _secret_problems("mqtt.password", config.mqtt.password)
    if config.mqtt is not None and config.mqtt.agent_secret is not None:
        yield from _secret_problems("mqtt.agent_secret", config.mqtt.agent_secret)
    if config.mqtt is not None and config.mqtt.tls is not None:
        if not config.mqtt.url.startswith("mqtts://"):
            yield "mqtt.tls: TLS settings need an mqtts:// url"
        if (config.mqtt.tls.cert_file is None) != (config.mqtt.tls.key_file is None):
            yield "mqtt.tls: give cert_file and key_file together"


def _notification_problems(config: Config, event_kinds: Collection[str] | None) -> Iterator[str]:
    notifiers = config.notifiers
    plans = config.contingency_plans
    services = {s.name for s in config.services}

    def unknown(where: str, names: list[str]) -> Iterator[str]:
        for k, name in enumerate(names):
            if name not in notifiers:
                yield f"{where}[{k}]: no notifier is called {name!r}"

    for i, customer in enumerate(config.customers):
        if customer.plan is not None and customer.plan not in plans:
            yield f"customers[{i}].plan: no contingency plan is called {customer.plan!r}"
    for name, plan in plans.items():
        where = f"contingency_plans.{name}"
        previous = 0.0
        for j, step in enumerate(plan.steps):
            if step.after < previous:
                yield f"{where}.steps[{j}].after: steps must be in order of their delay"
            previous = step.after
            yield from unknown(f"{where}.steps[{j}].notify", step.notify)
        yield from unknown(f"{where}.on_resolve", plan.on_resolve)
        if plan.repeat_every is not None and plan.repeat_every < 60:
            yield f"{where}.repeat_every: repeating more often than every 1m would spam customers"
    for i, route in enumerate(config.alerts):
        for j, pattern in enumerate(route.events if event_kinds is not None else ()):
            if not any(kind_matches(pattern, kind) for kind in event_kinds or ()):
                yield f"alerts[{i}].events[{j}]: {pattern!r} matches no event nodevigil publishes"
        yield from unknown(f"alerts[{i}].notify", route.notify)
    for name, notifier in notifiers.items():
        where = f"notifiers.{name}"
        if notifier.type == "webhook":
            yield from _secret_problems(where, notifier)
        elif notifier.type == "mqtt" and notifier.url is None and config.mqtt is None:
            yield f"{where}.url: give the broker's url, or configure the top-level mqtt section"
        elif notifier.type == "email":
            smtp = notifier.smtp
            if smtp.starttls and smtp.tls:
                yield f"{where}.smtp: starttls and tls exclude each other (tls is implicit TLS)"
            if smtp.password is not None:
                yield from _secret_problems(f"{where}.smtp.password", smtp.password)
                if smtp.username is None:
                    yield f"{where}.smtp.username: a password needs a username"
    for i, window in enumerate(config.maintenance):
        if window.end <= window.start:
            yield f"maintenance[{i}].end: must be after start"
        for j, service in enumerate(window.services):
            if service not in services:
                yield f"maintenance[{i}].services[{j}]: no service is called {service!r}"


def _secret_problems(where: str, ref: SecretRef) -> Iterator[str]:
    if (ref.secret_file is None) == (ref.secret_env is None):
        yield f"{where}: give exactly one of secret_file or secret_env"


def probe_timeout(probe: ProbeBase, defaults: Defaults) -> float:
    """The probe's own timeout; else one set in ``defaults``; else the built-in default, cut
    to 90 % of the probe's interval so a short interval needs no timeout of its own."""
    if probe.timeout:
        return probe.timeout
    if "timeout" in defaults.model_fields_set:
        return defaults.timeout
    interval = probe.interval or defaults.interval
    return min(defaults.timeout, round(0.9 * interval, 3))


def _resolve(config: Config, base_dir: Path | None) -> Config:
    """Fill each probe's interval/timeout/attempts and name; make paths config-relative."""
    d = config.defaults
    nodes: list[Node] = []
    for node in config.nodes:
        probes = []
        for probe in node.probes:
            filled: dict[str, Any] = {
                "name": probe.label,
                "interval": probe.interval or d.interval,
                "timeout": probe_timeout(probe, d),
                "attempts": probe.attempts or d.attempts,
            }
            ca_file = getattr(probe, "ca_file", None)
            if base_dir is not None and ca_file is not None and not ca_file.is_absolute():
                filled["ca_file"] = (base_dir / ca_file).resolve()
            probes.append(probe.model_copy(update=filled))
        nodes.append(node.model_copy(update={"probes": probes}))
    update: dict[str, Any] = {"nodes": nodes}
    if base_dir is not None and not config.state_dir.is_absolute():
        update["state_dir"] = (base_dir / config.state_dir).resolve()
    return config.model_copy(update=update)
