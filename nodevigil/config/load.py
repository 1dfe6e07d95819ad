"""Parse the YAML once, validate everything, and report every problem with its path."""

from __future__ import annotations

import os
import zoneinfo
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nodevigil.config.schema import (
    GLOBAL_LB_TYPES,
    LOCAL_LB_TYPES,
    Config,
    Node,
    SecretRef,
)
from nodevigil.durations import format_duration
from nodevigil.errors import ConfigError
from nodevigil.events import EVENT_KINDS, kind_matches

MIN_RETENTION = 90 * 86400.0  # clause IV.3

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a configuration file; raise ConfigError listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source=str(file)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}not valid YAML: {problem}"], source=str(file)) from None
    return parse_config(data, source=str(file), base_dir=file.resolve().parent)


def parse_config(data: Any, *, source: str = "", base_dir: Path | None = None) -> Config:
    """Validate already-loaded YAML data into a Config, resolving defaults and relative paths."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["the file must hold a mapping of keys"], source=source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(list(_schema_problems(exc, data)), source=source) from None
    problems = list(_semantic_problems(config))
    if problems:
        raise ConfigError(problems, source=source)
    return _resolve(config, base_dir)


def _schema_problems(exc: ValidationError, data: Any) -> Iterator[str]:
    for error in exc.errors(include_url=False):
        path = _format_path(error["loc"], data)
        message = _MESSAGES.get(error["type"], error["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        yield f"{path}: {message}" if path else message


def _format_path(loc: Sequence[int | str], data: Any) -> str:
    """Render a pydantic location as ``nodes[2].probes[0].timeout``, skipping union tags."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and _is_union_tag(node, part):
            continue  # pydantic names the chosen union member; the operator never wrote it
        out += f".{part}" if out else part
        node = node.get(part) if isinstance(node, dict) else None
    return out


def _is_union_tag(node: dict[str, Any], part: str) -> bool:
    return node.get("type") == part or part.startswith(("function-", "str", "int", "float"))


def _duplicates(names: Iterable[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def _semantic_problems(config: Config) -> Iterator[str]:
    """Cross-references and relations the schema alone cannot express."""
    try:
        zoneinfo.ZoneInfo(config.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        yield f"timezone: {config.timezone!r} is not an IANA time zone (e.g. Asia/Shanghai)"
    if config.records.retention < MIN_RETENTION:
        yield (
            f"records.retention: {format_duration(config.records.retention)} is shorter than "
            "the 90 days clause IV.3 requires"
        )
    yield from _fleet_problems(config)
    yield from _lb_problems(config)
    yield from _people_problems(config)
    yield from _notification_problems(config)


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
            timeout = probe.timeout or config.defaults.timeout
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
    for i, site in enumerate(config.sites):
        size = sum(1 for n in config.nodes if n.site == site.name)
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
        if token.role == "customer" and token.customer not in customers:
            yield f"api.tokens[{i}].customer: a customer token must name a configured customer"
        if token.role != "customer" and token.customer is not None:
            yield f"api.tokens[{i}].customer: only a customer token names a customer"
    if config.mqtt is not None and config.mqtt.password is not None:
        yield from _secret_problems("mqtt.password", config.mqtt.password)


def _notification_problems(config: Config) -> Iterator[str]:
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
        for j, pattern in enumerate(route.events):
            if not any(kind_matches(pattern, kind) for kind in EVENT_KINDS):
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
                "timeout": probe.timeout or d.timeout,
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


def read_secret(ref: SecretRef, base_dir: Path | None = None) -> str:
    """Read a secret from its file or environment variable; never log the value."""
    if ref.secret_env is not None:
        value = os.environ.get(ref.secret_env)
        if value is None:
            raise ConfigError([f"environment variable {ref.secret_env} is not set"])
        return value.strip()
    assert ref.secret_file is not None
    path = ref.secret_file if base_dir is None else base_dir / ref.secret_file
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"cannot read secret file {path}: {exc.strerror or exc}"]) from None
