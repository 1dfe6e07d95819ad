"""Render the configuration reference from the schema itself, so it cannot drift from the code.

``python -m nodevigil.config.reference > docs/configuration.md``
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from nodevigil.config import schema
from nodevigil.durations import format_duration

HEADER = """# Configuration reference

Generated from `nodevigil/config/schema.py` by `python -m nodevigil.config.reference`; a test
fails when this file is out of date. Durations are strings with a unit (`500ms`, `1s`, `10m`,
`1h30m`, `90d`). Names match `[A-Za-z0-9][A-Za-z0-9_.-]*`. Relative paths are relative to the
configuration file. `nodevigil check-config -c FILE` validates a file exactly as start-up does.
See `configs/example.yaml` for a working example.
"""

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("top level", schema.Config),
    ("api", schema.Api),
    ("api.tokens[]", schema.ApiToken),
    ("mqtt", schema.Mqtt),
    ("defaults", schema.Defaults),
    ("defaults.flap", schema.FlapDamping),
    ("failover", schema.FailoverSettings),
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
    ("secrets (tsig, api_key, mqtt.password, webhook, smtp.password)", schema.SecretRef),
    ("sla", schema.Sla),
    ("records", schema.Records),
]

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
    "reconnect_grace",
    "settlement_delay",
    "retention",
    "resolve_after",
    "firing_for",
    "after",
    "repeat_every",
    "reopen_window",
    "max_age",
    "backoff_initial",
    "backoff_max",
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
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
