"""The public status page: ``/status`` (plain HTML) and ``/status.json``, no token needed.

The daemon supplies the snapshot (``SNAPSHOT``, built by ``status_snapshot``); this module only
renders it. Everything in the snapshot is escaped: incident updates are free text written by
operators. Each service shows its daily history as a row of bars (one per day, oldest left),
as Statuspage and Uptime Kuma do: green without downtime, amber for up to ``MINOR_MINUTES``
unavailable minutes, red above, grey without data; each bar's tooltip says the day's figure.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
# AppKey's second argument must be a class for mypy, so the callable type goes in the annotation.
SNAPSHOT: web.AppKey[Snapshot] = web.AppKey("status_snapshot")

REFRESH_SECONDS = 30
MINOR_MINUTES = 15  # a day with more unavailable minutes than this is a red bar
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # Defence in depth for the operators' free text: no script, no remote asset may load.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}

# State -> (badge class, label). Unknown values fall back to "unknown": a snapshot value never
# reaches a class attribute.
SERVICE_STATES = {
    "operational": ("ok", "Operational"),
    "unavailable": ("bad", "Unavailable"),
    "maintenance": ("maint", "Maintenance"),
    "unknown": ("unknown", "Unknown"),
}
INCIDENT_STATES = {
    "investigating": ("bad", "Investigating"),
    "identified": ("warn", "Identified"),
    "monitoring": ("maint", "Monitoring"),
    "resolved": ("ok", "Resolved"),
}

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f8fa;color:#1f2328;font:16px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:52rem;margin:0 auto;padding:1rem}
h1{font-size:1.25rem;margin:.5rem 0 1rem;color:#59636e;font-weight:600}
h2{font-size:1.1rem;margin:1.75rem 0 .5rem}
.headline{border-radius:8px;padding:1rem 1.25rem;color:#fff;font-size:1.35rem;font-weight:600}
.headline small{display:block;font-size:.9rem;font-weight:400}
.card{background:#fff;border:1px solid #d1d9e0;border-radius:8px;margin:0;padding:0}
ul.card{list-style:none}
.card>li{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:center;
gap:.25rem 1rem;padding:.7rem 1rem;border-top:1px solid #d1d9e0}
.card>li:first-child{border-top:0}
.name{font-weight:600;overflow-wrap:anywhere}
.since{color:#59636e;font-size:.875rem}
.badge{display:inline-block;border-radius:1rem;padding:.1rem .7rem;color:#fff;
font-size:.85rem;font-weight:600;white-space:nowrap}
.ok{background:#1a7f37}.bad{background:#cf222e}.warn{background:#9a6700}
.maint{background:#0969da}.unknown{background:#59636e}
article.card{padding:.8rem 1rem;margin-bottom:.75rem}
article h3{font-size:1rem;margin:0 0 .25rem;display:flex;flex-wrap:wrap;gap:.5rem;
align-items:center}
.meta{color:#59636e;font-size:.875rem;margin:0 0 .5rem}
ol.updates{list-style:none;margin:0;padding:0;border-left:3px solid #d1d9e0}
ol.updates li{padding:.2rem 0 .5rem .75rem}
.update-head{font-size:.875rem;color:#59636e}
.update-head b{color:#1f2328}
.message{margin:.1rem 0 0;white-space:pre-wrap;overflow-wrap:anywhere}
details summary{cursor:pointer;color:#0969da;font-size:.875rem}
.empty{color:#59636e;margin:.25rem 0}
footer{color:#59636e;font-size:.875rem;margin:2rem 0 1rem}
a{color:#0969da}
time{white-space:nowrap}
.history{flex-basis:100%}
.bars{display:flex;gap:2px;height:2rem;align-items:stretch}
.bars span{flex:1 1 0;min-width:1px;border-radius:2px}
.bar-ok{background:#1a7f37}.bar-minor{background:#d4a72c}.bar-major{background:#cf222e}
.bar-none{background:#d1d9e0}
.history-legend{display:flex;justify-content:space-between;color:#59636e;font-size:.8rem}
"""


class _Page:
    """The two handlers; a failing snapshot is logged once, and once more on recovery."""

    def __init__(self) -> None:
        self.failing = False

    async def _body(self, request: web.Request, render: Callable[[dict[str, Any]], str]) -> str:
        try:
            body = render(await request.app[SNAPSHOT]())
        except Exception:
            if not self.failing:
                log.exception("status page: the snapshot failed; answering 503 until it works")
            self.failing = True
            raise
        if self.failing:
            log.info("status page: the snapshot works again")
        self.failing = False
        return body

    async def html(self, request: web.Request) -> web.Response:
        """The status page as self-contained HTML."""
        try:
            body = await self._body(request, render_html)
        except Exception:
            return web.Response(
                status=503, text=render_unavailable(), content_type="text/html", headers=_retry()
            )
        return web.Response(text=body, content_type="text/html", headers=HEADERS)

    async def json(self, request: web.Request) -> web.Response:
        """The snapshot as JSON, exactly."""
        try:
            body = await self._body(request, json.dumps)
        except Exception:
            error = json.dumps({"error": "status temporarily unavailable; try again shortly"})
            return web.Response(
                status=503, text=error, content_type="application/json", headers=_retry()
            )
        return web.Response(text=body, content_type="application/json", headers=HEADERS)


def _retry() -> dict[str, str]:
    return {**HEADERS, "Retry-After": str(REFRESH_SECONDS)}


def routes() -> list[web.RouteDef]:
    """The public status page's routes (outside /api/, so no token)."""
    page = _Page()
    return [web.get("/status", page.html), web.get("/status.json", page.json)]


# --- rendering ------------------------------------------------------------------------------


def _instant(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(raw: Any) -> str:
    """An RFC 3339 time as ``<time>`` showing minutes in UTC (the raw text if unparsable)."""
    value = _instant(raw)
    if value is None:
        return escape(str(raw)) if raw is not None else "—"
    return f'<time datetime="{escape(raw)}">{value:%Y-%m-%d %H:%M} UTC</time>'


def format_duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``12m``, ``3h 05m``, ``2d 4h``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _duration(start: Any, end: Any) -> str | None:
    a, b = _instant(start), _instant(end)
    return format_duration((b - a).total_seconds()) if a and b else None


def _badge(table: Mapping[str, tuple[str, str]], state: Any) -> str:
    css, label = table.get(str(state), ("unknown", str(state or "unknown").capitalize()))
    return f'<span class="badge {css}">{escape(label)}</span>'


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def headline(services: list[Mapping[str, Any]]) -> tuple[str, str]:
    """The page's verdict and its colour class: the worst state wins."""
    states = [s.get("state") for s in services]
    unavailable = states.count("unavailable")
    maintenance = states.count("maintenance")
    if unavailable:
        return f"{_plural(unavailable, 'service')} unavailable", "bad"
    if maintenance:
        return f"{_plural(maintenance, 'service')} under maintenance", "maint"
    if not services:
        return "No services are listed", "unknown"
    if any(state != "operational" for state in states):
        unknown = len(states) - states.count("operational")
        return f"{_plural(unknown, 'service')} not yet checked", "unknown"
    return "All services operational", "ok"


def _number(raw: Any) -> int | None:
    return int(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None


def _bar(day: Mapping[str, Any]) -> str:
    """One day's bar, its tooltip saying the day's figure."""
    when = escape(str(day.get("date", "")))
    lost, minutes = _number(day.get("unavailable_minutes")), _number(day.get("minutes"))
    if lost is None or not minutes:
        return f'<span class="bar-none" title="{when}: no data"></span>'
    share = f"{math.floor((minutes - lost) * 10_000 / minutes) / 100:g}%"
    if lost == 0:
        css, text = "bar-ok", f"no downtime ({share})"
    else:
        css = "bar-minor" if lost <= MINOR_MINUTES else "bar-major"
        text = f"{lost} min unavailable ({share})"
    return f'<span class="{css}" title="{when}: {text}"></span>'


def _history(service: Mapping[str, Any]) -> str:
    """The service's daily bars with their legend; nothing without a history."""
    days = [d for d in service.get("history") or [] if isinstance(d, Mapping)]
    if not days:
        return ""
    uptime = service.get("uptime")
    share = f"{uptime:g}% uptime" if isinstance(uptime, int | float) else "no data yet"
    label = f"{len(days)} days: {share}"
    return (
        f'<div class="history"><div class="bars" role="img" aria-label="{escape(label)}">'
        f"{''.join(_bar(d) for d in days)}</div>"
        f'<div class="history-legend"><span>{_plural(len(days), "day")} ago</span>'
        f"<span>{escape(share)}</span><span>Today</span></div></div>"
    )


def _services(services: list[Mapping[str, Any]]) -> str:
    if not services:
        return '<p class="empty">No services are listed.</p>'
    rows = []
    for service in services:
        since = service.get("since")
        note = f' <span class="since">since {_time(since)}</span>' if since else ""
        rows.append(
            f'<li><span class="name">{escape(str(service.get("name", "")))}</span>'
            f"<span>{note} {_badge(SERVICE_STATES, service.get('state'))}</span>"
            f"{_history(service)}</li>"
        )
    return f'<ul class="card">{"".join(rows)}</ul>'


def _updates(updates: Iterable[Mapping[str, Any]]) -> str:
    """An incident's updates, newest first."""
    floor = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(updates, key=lambda u: _instant(u.get("at")) or floor, reverse=True)
    if not ordered:
        return ""
    items = []
    for update in ordered:
        state = INCIDENT_STATES.get(str(update.get("state")), ("", str(update.get("state"))))[1]
        author = update.get("author")
        by = f" · {escape(str(author))}" if author else ""
        items.append(
            f'<li><div class="update-head"><b>{escape(state)}</b> · {_time(update.get("at"))}'
            f'{by}</div><p class="message">{escape(str(update.get("message", "")))}</p></li>'
        )
    return f'<ol class="updates">{"".join(items)}</ol>'


def _incident(incident: Mapping[str, Any], now: Any) -> str:
    started, resolved = incident.get("started_at"), incident.get("resolved_at")
    maintenance = " · during scheduled maintenance" if incident.get("maintenance") else ""
    updates = _updates(incident.get("updates") or [])
    if resolved is None:
        lasting = _duration(started, now)
        so_far = f" · ongoing for {lasting}" if lasting else ""
        meta = f"Started {_time(started)}{so_far}{maintenance}"
    else:
        lasted = _duration(started, resolved)
        took = f" · lasted {lasted}" if lasted else ""
        meta = f"{_time(started)} to {_time(resolved)}{took}{maintenance}"
        if updates:
            updates = f"<details><summary>Updates</summary>{updates}</details>"
    return (
        f'<article class="card"><h3><span class="name">'
        f"{escape(str(incident.get('service', '')))}</span>"
        f"{_badge(INCIDENT_STATES, incident.get('state'))}</h3>"
        f'<p class="meta">{meta}</p>{updates}</article>'
    )


def _maintenance(windows: list[Mapping[str, Any]], now: datetime | None) -> str:
    if not windows:
        return '<p class="empty">No maintenance is scheduled.</p>'
    rows = []
    for window in windows:
        start = _instant(window.get("start"))
        active = now is not None and start is not None and start <= now
        badge = (
            '<span class="badge maint">In progress</span>'
            if active
            else '<span class="badge unknown">Upcoming</span>'
        )
        names = ", ".join(escape(str(s)) for s in window.get("services") or []) or "—"
        note = window.get("note")
        rows.append(
            f'<li><span><span class="name">{names}</span>'
            f"{f' — {escape(str(note))}' if note else ''}<br>"
            f'<span class="since">{_time(window.get("start"))} to {_time(window.get("end"))}'
            f"</span></span>{badge}</li>"
        )
    return f'<ul class="card">{"".join(rows)}</ul>'


def _observe(would: Any) -> str:
    """Observe mode (``failover.mode``): what failover would do; nothing when it acts."""
    if would is None:
        return ""
    lines = "".join(f'<li><span class="message">{escape(str(w))}</span></li>' for w in would)
    return (
        "<h2>Observe mode</h2>"
        '<p class="empty">Failover is observing: it changes no load balancer and notifies '
        "no customer.</p>"
        + (
            f'<ul class="card observe">{lines}</ul>'
            if lines
            else '<p class="empty">Nothing it would change now.</p>'
        )
    )


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def render_html(snapshot: Mapping[str, Any]) -> str:
    """The whole page for one snapshot; every value from it is escaped."""
    services = list(snapshot.get("services") or [])
    incidents = list(snapshot.get("incidents") or [])
    generated = snapshot.get("generated_at")
    verdict, tone = headline(services)
    open_ = [i for i in incidents if i.get("resolved_at") is None]
    recent = [i for i in incidents if i.get("resolved_at") is not None]
    body = [
        "<h1>Service status</h1>",
        f'<div class="headline {tone}" role="status">{escape(verdict)}'
        f"<small>as of {_time(generated)}</small></div>",
        _observe(snapshot.get("observe")),
        "<h2>Services</h2>",
        _services(services),
        "<h2>Open incidents</h2>",
        "".join(_incident(i, generated) for i in open_)
        or '<p class="empty">No open incidents.</p>',
        "<h2>Maintenance</h2>",
        _maintenance(list(snapshot.get("maintenance") or []), _instant(generated)),
        "<h2>Recent incidents</h2>",
        "".join(_incident(i, generated) for i in recent)
        or '<p class="empty">No incidents in the last 7 days.</p>',
        f"<footer>Times are in UTC{_days_note(snapshot.get('history'))}. This page refreshes "
        f'every {REFRESH_SECONDS} seconds; the same data as <a href="status.json">JSON</a>.'
        "</footer>",
    ]
    return _page(f"Service status: {verdict}", "".join(body))


def _days_note(history: Any) -> str:
    if not isinstance(history, Mapping) or not history.get("timezone"):
        return ""
    return f"; each bar of a service's history is one day in {escape(str(history['timezone']))}"


def render_unavailable() -> str:
    """The short page answered while no snapshot can be taken."""
    return _page(
        "Service status: temporarily unavailable",
        "<h1>Service status</h1>"
        '<div class="headline unknown" role="status">Status temporarily unavailable'
        "<small>Please try again shortly; this page retries by itself.</small></div>",
    )
