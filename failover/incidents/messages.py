"""What customers and operators are told: notifications built from incidents and events.

Every message id is derived from what it is about (incident, opening, plan step, customer,
notifier; or event and notifier), so writing it twice after a crash is harmless and a receiver
sees the same id on every retry, and a new leader composing it again writes the same id.

An incident's part of the id (``incident_key``) is ``<installation>.inc<id>-<start ms>``: the
installation id (drawn once and kept in the state) keeps two installations apart, and the
outage's start keeps a restored older state apart from what it sent before the backup was
restored. Such a state hands out incident numbers again, but never for an outage that started
at the same millisecond as one already notified. A random part drawn per process or per restore
would not do: every host and every restart must derive the same id for the same notice. A
high-water mark would not either: it lives in the very state a restore takes back.

Customers read times in their own time zone (``customers[].timezone``, by default the billing
``timezone``), to the second, and find the public status page's link (``status_page.url``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from failover.events import NotificationDead
from failover.incidents.model import Incident, Outgoing, Window, iso
from failover.notify.base import Message
from nodevigil.core.config import Config
from nodevigil.core.config.schema import ContingencyPlan, Customer
from nodevigil.core.events import Event, kind_matches


def customers_of(config: Config, service: str) -> Iterator[tuple[Customer, ContingencyPlan]]:
    """The customers holding ``service`` that have a contingency plan."""
    for customer in config.customers:
        if service in customer.services and customer.plan is not None:
            plan = config.contingency_plans.get(customer.plan)
            if plan is not None:
                yield customer, plan


def incident_key(installation: str, incident: Incident) -> str:
    """``<installation>.inc<id>-<start ms>``: the incident's part of its notices' ids."""
    prefix = f"{installation}." if installation else ""
    return f"{prefix}inc{incident.id}-{round(incident.started_at * 1000)}"


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)  # names were checked when the configuration was loaded


def local_time(seconds: float, zone: str) -> str:
    """``2026-12-05 21:09:00 +08:00 (Asia/Shanghai)``: wall seconds as a customer reads them,
    to the second (``UTC`` for UTC)."""
    at = datetime.fromtimestamp(int(seconds), UTC)
    if zone == "UTC":
        return at.strftime("%Y-%m-%d %H:%M:%S UTC")
    local = at.astimezone(_zone(zone))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]} ({zone})"


def customer_zone(config: Config, customer: str) -> str:
    """The time zone the customer reads times in: its own, else the billing ``timezone``."""
    found = next((c for c in config.customers if c.id == customer), None)
    if found is not None and found.timezone is not None:
        return found.timezone
    return config.timezone


def human_duration(seconds: float) -> str:
    """``1h2m5s``, ``1m58s``, ``40s``: how people read an outage's length."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s"]
    text = "".join(parts)
    return text.removesuffix("0s") if total >= 60 and secs == 0 else text


def _facts(incident: Incident, customer: str, zone: str, window: Window | None) -> list[str]:
    lines = [
        f"Incident:  {incident.id} ({incident.state.value})",
        f"Customer:  {customer}",
        f"Service:   {incident.service}",
        f"Started:   {local_time(incident.started_at, zone)}",
    ]
    if incident.resolved_at is not None:
        lines.append(f"Resolved:  {local_time(incident.resolved_at, zone)}")
        lines.append(f"Duration:  {human_duration(incident.resolved_at - incident.started_at)}")
    lines.append(f"Cause:     {incident.cause}")
    if window is not None:
        note = f" ({window.note})" if window.note else ""
        start, end = local_time(window.start, zone), local_time(window.end, zone)
        lines.append(f"Maintenance: {start} to {end}{note}")
    return lines


class Composer:
    """Builds the outbox entries for one configuration and installation.

    ``installation`` is the state's installation id (``Backend.installation_id``); the
    status page's link is ``status_url``, by default the configuration's ``status_page.url``.
    """

    def __init__(
        self, config: Config, status_url: str | None = None, *, installation: str = ""
    ) -> None:
        self.config = config
        self.status_url = status_url if status_url is not None else config.status_page.url
        self.installation = installation

    def _incident_message(
        self,
        *,
        incident: Incident,
        customer: str,
        notifier: str,
        msg_id: str,
        kind: str,
        summary: str,
        headline: str,
        at: float,
        window: Window | None,
        extra: Mapping[str, Any] | None = None,
    ) -> Message:
        body = [
            headline,
            "",
            *_facts(incident, customer, customer_zone(self.config, customer), window),
        ]
        if self.status_url:
            body.append(f"Status:    {self.status_url}")
        body += [
            "",
            "You receive this under your contingency plan (service contract, clause VIII.6).",
        ]
        data: dict[str, Any] = {
            "incident": incident.as_dict(),
            "customer": customer,
            "service": incident.service,
            "message": headline,
            **(extra or {}),
        }
        if self.status_url:
            data["status_page"] = self.status_url
        if window is not None:
            data["maintenance_window"] = window.as_dict()
        return Message(
            id=msg_id,
            notifier=notifier,
            kind=kind,
            subject=incident.service,
            created_at=at,
            data=data,
            summary=summary,
            text="\n".join(body) + "\n",
        )

    def opening(self, incident: Incident, at: float, window: Window | None) -> list[Outgoing]:
        """Every plan step of every customer of the service, each due after its delay.

        A first opening counts delays from the outage's start; a reopening from its own time.
        """
        base = incident.started_at if incident.openings == 1 else incident.opened_at
        out: list[Outgoing] = []
        for customer, plan in customers_of(self.config, incident.service):
            for k, step in enumerate(plan.steps):
                if k == 0:
                    kind = "incident.opened" if incident.openings == 1 else "incident.reopened"
                else:
                    kind = "incident.escalated"
                due = base + step.after
                out += self._step(incident, customer.id, step.notify, kind, f"s{k}", due, window)
        return out

    def repeat(self, incident: Incident, now: float) -> list[Outgoing]:
        """The last step again, for customers whose plan repeats it, if one is due now."""
        base = incident.started_at if incident.openings == 1 else incident.opened_at
        out: list[Outgoing] = []
        for customer, plan in customers_of(self.config, incident.service):
            if plan.repeat_every is None:
                continue
            last = len(plan.steps) - 1
            first = base + plan.steps[-1].after
            n = int((now - first) // plan.repeat_every)
            if n < 1:
                continue
            due = first + n * plan.repeat_every  # only the latest repeat: none are backfilled
            step = f"s{last}.r{n}"
            notify = plan.steps[-1].notify
            out += self._step(incident, customer.id, notify, "incident.escalated", step, due, None)
        return out

    def _step(  # noqa: PLR0917 - a private helper called with positional facts of one step
        self,
        incident: Incident,
        customer: str,
        notifiers: list[str],
        kind: str,
        step: str,
        due: float,
        window: Window | None,
    ) -> list[Outgoing]:
        service = incident.service
        if window is not None:
            summary = f"{service} is unavailable during announced maintenance"
        elif kind == "incident.reopened":
            summary = f"{service} is unavailable again"
        elif kind == "incident.escalated":
            summary = f"{service} is still unavailable"
        else:
            summary = f"{service} is unavailable"
        summary += f" (incident {incident.id})"
        elapsed = due - incident.started_at
        since = local_time(incident.started_at, customer_zone(self.config, customer))
        headline = f"Your service {service} is wholly unavailable since {since}" + (
            f" ({human_duration(elapsed)} so far)." if elapsed >= 1 else "."
        )
        if window is not None:
            headline += " This falls within announced maintenance."
        key = incident_key(self.installation, incident)
        return [
            Outgoing(
                message=self._incident_message(
                    incident=incident,
                    customer=customer,
                    notifier=notifier,
                    msg_id=f"{key}.o{incident.openings}.{step}.{customer}.{notifier}",
                    kind=kind,
                    summary=summary,
                    headline=headline,
                    at=due,
                    window=window,
                    extra={"step": step, "opening": incident.openings},
                ),
                not_before=due,
                incident=incident.id,
                customer=customer,
                step=step,
            )
            for notifier in notifiers
        ]

    def resolution(self, incident: Incident, at: float) -> list[Outgoing]:
        """The resolution notice of each customer's plan."""
        assert incident.resolved_at is not None
        took = human_duration(incident.resolved_at - incident.started_at)
        summary = f"{incident.service} is available again after {took} (incident {incident.id})"
        headline = f"Your service {incident.service} is available again (unavailable for {took})."
        key = incident_key(self.installation, incident)
        out: list[Outgoing] = []
        for customer, plan in customers_of(self.config, incident.service):
            for notifier in plan.on_resolve:
                msg_id = f"{key}.o{incident.openings}.resolve.{customer.id}.{notifier}"
                message = self._incident_message(
                    incident=incident,
                    customer=customer.id,
                    notifier=notifier,
                    msg_id=msg_id,
                    kind="incident.resolved",
                    summary=summary,
                    headline=headline,
                    at=at,
                    window=None,
                )
                out.append(Outgoing(message, at, incident.id, customer.id, "resolve"))
        return out

    def update(self, incident: Incident, text: str, at: float) -> list[Outgoing]:
        """An operator's update, through the first step's notifiers of each plan."""
        summary = f"{incident.service}: {incident.state.value} (incident {incident.id})"
        stamp = int(at * 1000)
        key = incident_key(self.installation, incident)
        out: list[Outgoing] = []
        for customer, plan in customers_of(self.config, incident.service):
            for notifier in plan.steps[0].notify:
                message = self._incident_message(
                    incident=incident,
                    customer=customer.id,
                    notifier=notifier,
                    msg_id=f"{key}.u{stamp}.{customer.id}.{notifier}",
                    kind="incident.updated",
                    summary=summary,
                    headline=text,
                    at=at,
                    window=None,
                )
                out.append(Outgoing(message, at, incident.id, customer.id, "update"))
        return out

    def alerts(self, event: Event) -> list[Outgoing]:
        """Operator alerts: the event to every notifier of every route that matches it."""
        notifiers: list[str] = []
        for route in self.config.alerts:
            if route.subjects and event.subject not in route.subjects:
                continue
            if any(kind_matches(p, event.kind) for p in route.events):
                notifiers += [n for n in route.notify if n not in notifiers]
        if event.kind.startswith("notification."):
            if isinstance(event, NotificationDead) and event.message_kind.startswith(
                "notification."
            ):
                return []  # the lost message was itself such a report: stop the chain here
            # Never report a notifier's trouble through that same notifier: it would loop.
            notifiers = [n for n in notifiers if n != event.subject]
        if not notifiers:
            return []
        detail = event.detail()
        summary = f"{event.kind} {event.subject}" + (f": {detail}" if detail else "")
        lines = [summary, "", f"At:      {iso(event.at)}", f"Vantage: {event.vantage}"]
        form = event.as_dict()
        lines += [f"{key}: {value}" for key, value in sorted(form["data"].items())]
        return [
            Outgoing(
                Message(
                    id=f"ev.{event.id}.{notifier}",
                    notifier=notifier,
                    kind=event.kind,
                    subject=event.subject,
                    created_at=event.at,
                    data=form,
                    summary=summary,
                    text="\n".join(lines) + "\n",
                ),
                not_before=event.at,
            )
            for notifier in notifiers
        ]
