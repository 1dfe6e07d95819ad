"""The controller store's rows, shared by both backends: how a book entry, an outage and an
action record become JSON text and back, and which entries a save must write.

Bodies are JSON *text* in both backends, not PostgreSQL's jsonb: jsonb refuses what JSON text
allows (``\\u0000`` in a string, a NaN that ``json.dumps`` writes), and a save the store refuses
every cycle would stop the controller from keeping its book.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from failover.controller.state import (
    Book,
    BrakeBook,
    NodeBook,
    Outage,
    SiteBook,
    changed_keys,
)
from failover.controller.store import ActionRecord

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BookChanges:
    """What one ``save_book`` writes: everything when ``rewrite``, else only what changed."""

    rewrite: bool  # nothing known about the stored book: delete it all first
    entries: list[tuple[str, str, str]]  # (kind "node"/"site"/"brake", name, body) to write
    gone: list[tuple[str, str]]  # (kind, name) to delete
    outages: list[tuple[str, float, str]]  # (service, started_at, body) to insert or replace
    ended: list[str]  # services whose outage is over


def _changes(new: Mapping[str, T], old: Mapping[str, T] | None) -> tuple[dict[str, T], list[str]]:
    """Entries of ``new`` that differ from ``old``, and names ``old`` has but ``new`` lacks."""
    if old is None:
        return dict(new), []
    # By identity first: an unchanged entry is the very same object, and comparing 10,000
    # dataclasses field by field took milliseconds a save.
    changed = {
        name: value for name in changed_keys(new, old) if (value := new[name]) != old.get(name)
    }
    return changed, [name for name in old if name not in new]


def book_changes(book: Book, saved: Book | None) -> BookChanges:
    """The writes that turn the stored ``saved`` (None: unknown) into ``book``."""
    # The controller saves before it acts: with 10,000 nodes rewriting every row took ~140 ms
    # on the drain path (SQLite), writing the few that changed takes a few.
    nodes, gone_nodes = _changes(book.nodes, None if saved is None else saved.nodes)
    sites, gone_sites = _changes(book.sites, None if saved is None else saved.sites)
    brakes, gone_brakes = _changes(book.brakes, None if saved is None else saved.brakes)
    outages, ended = _changes(book.outages, None if saved is None else saved.outages)
    return BookChanges(
        rewrite=saved is None,
        entries=[("node", name, json.dumps(asdict(b))) for name, b in nodes.items()]
        + [("site", name, json.dumps(asdict(b))) for name, b in sites.items()]
        + [("brake", key, json.dumps(asdict(b))) for key, b in brakes.items()],
        gone=[("node", n) for n in gone_nodes]
        + [("site", n) for n in gone_sites]
        + [("brake", key) for key in gone_brakes],
        outages=[(o.service, o.started_at, outage_body(o)) for o in outages.values()],
        ended=ended,
    )


def outage_body(outage: Outage) -> str:
    """What an outage keeps besides its service and start."""
    return json.dumps({"sites": outage.sites, "evidence": dict(outage.evidence)})


def book_from(entries: list[tuple[str, str, str]], outages: list[tuple[str, float, str]]) -> Book:
    """The book from stored (kind, name, body) entries and (service, started_at, body) outages."""
    nodes: dict[str, NodeBook] = {}
    sites: dict[str, SiteBook] = {}
    brakes: dict[str, BrakeBook] = {}
    for kind, name, body in entries:
        if kind == "node":
            nodes[name] = NodeBook(**json.loads(body))
        elif kind == "site":
            sites[name] = SiteBook(**json.loads(body))
        elif kind == "brake":  # an engaged brake (scope "fleet" or "site:NAME")
            fields: dict[str, Any] = json.loads(body)
            held, held_sites = fields.pop("held", ()), fields.pop("held_sites", ())
            brakes[name] = BrakeBook(**fields, held=tuple(held), held_sites=tuple(held_sites))
    found: dict[str, Outage] = {}
    for service, started_at, body in outages:
        extra: dict[str, Any] = json.loads(body)
        found[service] = Outage(
            service, started_at, tuple(extra.get("sites", ())), extra.get("evidence", {})
        )
    return Book(nodes, sites, found, brakes)


def action_body(record: ActionRecord) -> str:
    """An action record as stored."""
    return json.dumps(asdict(record))


def action_from(body: str) -> ActionRecord:
    """An action record from what ``action_body`` stored."""
    return ActionRecord(**json.loads(body))
