"""``nodevigil status``, ``nodevigil nodes`` and ``nodevigil events [--follow]``: the running
daemon's view for a person at a terminal (tables) or a script (``--output json``).

They read the daemon's API with a read or admin token, as the other remote commands do
(``remote.Api``), and change nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from nodevigil.app.remote import Api, Unreachable, add_connection_arguments
from nodevigil.core.durations import parse_duration
from nodevigil.core.errors import NodevigilError

DECISIONS = 5  # the last decisions ``status`` shows
FOLLOW_OVERLAP = 10.0  # seconds re-read at each poll: an event may be stamped before it lands
MAX_EVENTS = 1000  # the API's largest page


def add_arguments(sub: Any, default_config: str | Path) -> None:
    """The ``status``, ``nodes`` and ``events`` subcommands."""
    status = sub.add_parser(
        "status",
        help="the running daemon at a glance: leader, nodes by site, services, "
        "open incidents, last decisions",
    )
    nodes = sub.add_parser("nodes", help="every node: site, verdict and since when, LB state")
    nodes.add_argument("--site", action="append", default=[], help="only this site (repeat)")
    events = sub.add_parser("events", help="recorded events, oldest first; --follow for new ones")
    events.add_argument("--kind", help="kinds starting with this (node., lb.action)")
    events.add_argument("--subject", help="one node, site or service")
    events.add_argument("--since", help="RFC 3339 time, epoch seconds, or an age such as 15m")
    events.add_argument(
        "--limit", type=int, default=20, help="how many of the latest to show first (max 1000)"
    )
    events.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C"
    )
    events.add_argument(
        "--interval", default="1s", type=_duration, help="how often --follow asks (default 1s)"
    )
    for cmd in (status, nodes, events):
        cmd.add_argument(
            "-o", "--output", choices=["table", "json"], default="table", help="default: table"
        )
        add_connection_arguments(cmd, default_config, role="a read or admin token")


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0s")
    return seconds


async def run(args: argparse.Namespace) -> int:
    """Run ``status``, ``nodes`` or ``events``."""
    api = Api(args)
    out = sys.stdout
    if args.command == "events":
        return await events(api, args, out)
    if args.command == "status":
        view = await status_view(api)
        if args.output == "json":
            write_json(view, out)
        else:
            write_status(view, out)
        return 0
    rows = await node_rows(api, set(args.site))
    if args.output == "json":
        write_json({"nodes": rows}, out)
    else:
        write_nodes(rows, out)
    return 0


# --- status ---------------------------------------------------------------------------------


async def status_view(api: Api) -> dict[str, Any]:
    """What ``status`` shows, gathered from the API in one go."""
    status, nodes, incidents, decisions = await asyncio.gather(
        api.get("/api/v1/status"),
        api.get("/api/v1/nodes"),
        api.get("/api/v1/incidents?state=open"),
        api.get(f"/api/v1/events?kind=controller.decision&limit={DECISIONS}"),
    )
    cluster = status.get("cluster")
    by_site = _nodes_by_site(status["nodes"], nodes["nodes"])
    sites = [
        {
            **{k: site[k] for k in ("name", "can_serve", "serving", "panic", "nodes_out")},
            "drained": site.get("override") is not None,
            "nodes": by_site.get(site["name"], []),
        }
        for site in status["sites"]
    ]
    return {
        "api": api.base,
        "role": status.get("role"),
        "leader": cluster.get("leader") if cluster else None,
        "epoch": cluster.get("epoch") if cluster else None,
        "mode": status.get("mode", "act"),
        "last_cycle_at": status.get("last_cycle_at"),
        "sites": sites,
        "services": status["services"],
        "incidents": [
            {k: i.get(k) for k in ("id", "service", "state", "started_at", "cause")}
            for i in incidents["incidents"]
        ],
        "decisions": [
            {"at": e["at"], "vantage": e.get("vantage"), "decision": e["data"].get("decision")}
            for e in reversed(decisions["events"])
        ],
    }


def _nodes_by_site(
    controller: Sequence[dict[str, Any]], monitor: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """The controller's nodes (desired and actual LB state) with the verdict's ``since``."""
    health = {n["name"]: n for n in monitor}
    out: dict[str, list[dict[str, Any]]] = {}
    for node in controller:
        seen = health.get(node["name"], {})
        out.setdefault(node["site"], []).append(
            {
                "name": node["name"],
                "verdict": node["verdict"],
                "since": seen.get("since"),
                "lb": node.get("actual"),
                "desired": node.get("desired_state"),
                "drained": node.get("override") is not None,
                "why": node.get("why", ""),
            }
        )
    return out


def write_status(view: dict[str, Any], out: TextIO) -> None:
    """``status`` as tables."""
    now = datetime.now(UTC)
    if view["leader"] is not None:
        who = f"leader {view['leader']} (epoch {view['epoch']}); this host: {view['role']}"
    else:
        who = "single host"
    mode = "" if view["mode"] == "act" else f", mode {view['mode']}: nothing is written"
    cycle = _when(view["last_cycle_at"], now) or "no cycle yet"
    print(f"nodevigil at {view['api']}: {who}{mode}; last cycle {cycle}", file=out)
    rows = []
    for site in view["sites"]:
        state = "serving" if site["serving"] else "withdrawn"
        if not site["can_serve"]:
            state += ", cannot serve"
        if site["panic"]:
            state += ", panic"
        if site["drained"]:
            state += ", drained"
        for index, node in enumerate(site["nodes"] or [{}]):
            rows.append(
                [
                    site["name"] if index == 0 else "",
                    state if index == 0 else "",
                    node.get("name", "-"),
                    node.get("verdict", ""),
                    _when(node.get("since"), now),
                    _lb_state(node),
                    node.get("why", ""),
                ]
            )
    _section(out, "", ["SITE", "STATE", "NODE", "VERDICT", "SINCE", "LB", "WHY"], rows)
    rows = [
        [
            s["name"],
            "available" if s["available"] else "UNAVAILABLE",
            _when(s.get("unavailable_since"), now),
        ]
        for s in view["services"]
    ]
    _section(out, "", ["SERVICE", "STATE", "SINCE"], rows)
    rows = [
        [str(i["id"]), i["service"], i["state"], _when(i["started_at"], now), i["cause"] or ""]
        for i in view["incidents"]
    ]
    header = ["INCIDENT", "SERVICE", "STATE", "STARTED", "CAUSE"]
    _section(out, "open incidents: none", header, rows)
    rows = [[_when(d["at"], now), d["decision"] or ""] for d in view["decisions"]]
    _section(out, "decisions: none yet", ["DECIDED", "DECISION"], rows)


def _lb_state(node: dict[str, Any]) -> str:
    actual, desired = node.get("lb"), node.get("desired")
    text = actual or "unread"
    if desired and actual and desired != actual:
        text += f" (want {desired})"
    if node.get("drained"):
        text += ", drained by an operator"
    return text


# --- nodes ----------------------------------------------------------------------------------


async def node_rows(api: Api, sites: set[str]) -> list[dict[str, Any]]:
    """Every node (of ``sites``, when given) with its verdict, since when, LB state and probes."""
    status, nodes = await asyncio.gather(api.get("/api/v1/status"), api.get("/api/v1/nodes"))
    lb = {n["name"]: n for n in status["nodes"]}
    unknown = sites - {s["name"] for s in status["sites"]}
    if unknown:
        raise NodevigilError(f"--site: no site is called {', '.join(sorted(unknown))}")
    rows = []
    for node in nodes["nodes"]:
        if sites and node["site"] not in sites:
            continue
        controller = lb.get(node["name"], {})
        rows.append(
            {
                "name": node["name"],
                "site": node["site"],
                "verdict": node["verdict"],
                "since": node.get("since"),
                "lb": controller.get("actual"),
                "desired": controller.get("desired_state"),
                "drained": controller.get("override") is not None,
                "probes": [
                    {
                        "name": p["name"],
                        "state": p["state"],
                        "detail": (p.get("last") or {}).get("detail", ""),
                    }
                    for p in node["probes"]
                ],
            }
        )
    return rows


def write_nodes(rows: list[dict[str, Any]], out: TextIO) -> None:
    """``nodes`` as a table."""
    now = datetime.now(UTC)
    table = [
        [
            r["name"],
            r["site"],
            r["verdict"],
            _when(r["since"], now),
            _lb_state(r),
            ", ".join(_probe(p) for p in r["probes"]),
        ]
        for r in rows
    ]
    _table(out, ["NODE", "SITE", "VERDICT", "SINCE", "LB", "PROBES"], table)


def _probe(probe: dict[str, Any]) -> str:
    text = f"{probe['name']} {probe['state']}"
    if probe["state"] != "up" and probe["detail"]:
        text += f" ({_clip(probe['detail'], 60)})"
    return text


# --- events ---------------------------------------------------------------------------------


async def events(api: Api, args: argparse.Namespace, out: TextIO) -> int:
    """Print the latest events oldest first; with ``--follow``, then every new one."""
    if not 1 <= args.limit <= MAX_EVENTS:
        raise NodevigilError(f"--limit: must be from 1 to {MAX_EVENTS}")
    since = _since(args.since) if args.since else None

    def show(event: dict[str, Any]) -> None:
        if args.output == "json":
            write_json(event, out)
        else:
            write_event(event, out)

    query = {"kind": args.kind, "subject": args.subject, "since": since}
    found = await api.get(_events_path(query, args.limit))
    seen: dict[str, float] = {}
    for event in reversed(found["events"]):
        show(event)
        seen[event["id"]] = _seconds(event["at"])
    out.flush()
    if args.follow:
        await follow(api, query, seen=seen, show=show, interval=args.interval, out=out)
    return 0


async def follow(
    api: Api,
    query: dict[str, str | None],
    *,
    seen: dict[str, float],
    show: Callable[[dict[str, Any]], None],
    interval: float,
    out: TextIO,
) -> None:
    """Ask for new events every ``interval`` until cancelled (Ctrl-C); print each once.

    Each poll re-reads the last ``FOLLOW_OVERLAP`` seconds, because an event can be stamped
    a moment before it reaches the log (a batch, another vantage's clock); ids seen are
    skipped. A daemon that stops answering is said once, and its return once.
    """
    away = False
    while True:
        await asyncio.sleep(interval)
        newest = max(seen.values(), default=datetime.now(UTC).timestamp() - FOLLOW_OVERLAP)
        cursor = newest - FOLLOW_OVERLAP
        if query.get("since") is not None:
            cursor = max(cursor, _seconds(str(query["since"])))
        try:
            found = await api.get(_events_path({**query, "since": f"{cursor:.6f}"}, MAX_EVENTS))
        except Unreachable as exc:
            if not away:
                print(f"nodevigil: {exc} (still trying)", file=sys.stderr, flush=True)
            away = True
            continue
        if away:
            print(f"nodevigil: {api.base} answers again", file=sys.stderr, flush=True)
            away = False
        fresh = [e for e in reversed(found["events"]) if e["id"] not in seen]
        if len(found["events"]) == MAX_EVENTS:
            print("nodevigil: more events than one page; some were skipped", file=sys.stderr)
        for event in fresh:
            show(event)
            seen[event["id"]] = _seconds(event["at"])
        out.flush()
        horizon = max(seen.values(), default=cursor) - 2 * FOLLOW_OVERLAP
        for key in [k for k, at in seen.items() if at < horizon]:
            del seen[key]  # memory stays bounded however long it follows


def _events_path(query: dict[str, str | None], limit: int) -> str:
    given = {k: v for k, v in query.items() if v is not None}
    return "/api/v1/events?" + urlencode({**given, "limit": str(limit)})


def _since(text: str) -> str:
    """``--since``: an age (``15m``) becomes epoch seconds; a time is passed on as given."""
    try:
        age = parse_duration(text)
    except ValueError:
        return text  # RFC 3339 or epoch seconds: the API checks it and names it if wrong
    return f"{datetime.now(UTC).timestamp() - age:.6f}"


def write_event(event: dict[str, Any], out: TextIO) -> None:
    """One event as one line: time, kind, subject, vantage, what happened."""
    data = event.get("data") or {}
    if "decision" in data:
        what = str(data["decision"])
    else:
        what = " ".join(f"{k}={_compact(v)}" for k, v in data.items() if v not in (None, "", []))
    vantage = f"[{event['vantage']}]" if event.get("vantage") else ""
    print(
        f"{event['at']}  {event['kind']:<22} {event['subject']:<16} {vantage} {_clip(what, 240)}",
        file=out,
    )


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


# --- shared ---------------------------------------------------------------------------------


def write_json(value: Any, out: TextIO) -> None:
    """One JSON document (one line: ``events --follow`` writes a stream of them)."""
    print(json.dumps(value, separators=(",", ":")), file=out)


def _seconds(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return float(text)


def _when(text: str | None, now: datetime) -> str:
    """An RFC 3339 time, with how long ago for a person (``… (4m12s ago)``)."""
    if not text:
        return ""
    moment = datetime.fromisoformat(text)
    ago = max(0, round((now - moment).total_seconds()))
    hours, rest = divmod(ago, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours >= 48:
        age = f"{hours // 24}d"
    elif hours:
        age = f"{hours}h{minutes}m"
    elif minutes:
        age = f"{minutes}m{seconds}s"
    else:
        age = f"{seconds}s"
    return f"{moment.replace(microsecond=0).isoformat().replace('+00:00', 'Z')} ({age} ago)"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _section(out: TextIO, empty: str, header: list[str], rows: list[list[str]]) -> None:
    """A blank line, then the table, or the ``empty`` line when there are no rows."""
    print(file=out)
    if not rows and empty:
        print(empty, file=out)
        return
    _table(out, header, rows)


def _table(out: TextIO, header: list[str], rows: Iterable[list[str]]) -> None:
    rows = [header, *rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=out)
