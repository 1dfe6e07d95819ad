"""The event log's contract (``nodevigil.core.eventlog.EventLog``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nodevigil.core.errors import StateError
from nodevigil.core.eventlog import EventLog
from nodevigil.core.events import Event
from nodevigil.state.backend import Backend
from tests.failover.daemons import poll_until
from tests.state.helpers import event, set_schema_version


@pytest.fixture
async def log(backend: Backend) -> AsyncIterator[EventLog]:
    """An opened, empty event log."""
    opened = backend.event_log()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def listed(e: Event) -> dict[str, Any]:
    """What ``query`` lists for ``e``."""
    as_json: dict[str, Any] = json.loads(json.dumps(e.as_dict(), default=str))
    return as_json


async def write(log: EventLog, *events: Event) -> None:
    for e in events:
        log.append(e)
    await log.query(limit=1)  # a query writes what waits first (the store takes writes here)
    assert log.waiting == 0


async def test_a_new_log_is_empty_and_counts_nothing(log: EventLog) -> None:
    assert await log.query() == []
    assert (log.waiting, log.write_errors, log.dropped) == (0, 0, 0)


async def test_events_are_listed_newest_first_as_published(log: EventLog) -> None:
    events = [event("node.down", f"sh-{i}", 1000.0 + i, reason="timeout", n=i) for i in range(5)]
    for e in events:
        log.append(e)
    assert log.waiting == 5
    assert await log.query() == [listed(e) for e in reversed(events)]
    assert log.waiting == 0  # the query wrote them first
    assert await log.query() == [listed(e) for e in reversed(events)]


async def test_the_json_form_survives_the_store(log: EventLog) -> None:
    odd = event(
        "lb.action",
        "web/sh-1",
        1_700_000_000.123456,
        nested={"a": [1, 2.5, None, True], "b": {"c": "déjà vu ✓"}},
        sites=("sh", "bj"),
        nul="before\x00after",
        big=2**53 + 1,
        empty={},
    )
    await write(log, odd)
    [row] = await log.query()
    assert row == listed(odd)
    assert row["at"] == 1_700_000_000.123456
    assert row["data"]["nul"] == "before\x00after"


async def test_the_same_event_twice_is_kept_once(log: EventLog) -> None:
    e = event("node.up", "sh-1", 10.0)
    await write(log, e)
    await write(log, e)
    assert await log.query() == [listed(e)]


async def test_filters_by_time_kind_prefix_and_subject(log: EventLog) -> None:
    a = event("node.down", "sh-1", 10.0)
    b = event("node.up", "sh-1", 20.0)
    c = event("site.down", "sh", 30.0)
    d = event("nodes.count", "sh-1", 40.0)
    e = event("node_x.odd", "sh-2", 50.0)
    await write(log, a, b, c, d, e)

    async def ids(**filters: Any) -> list[str]:
        return [r["id"] for r in await log.query(**filters)]

    assert await ids(since=20.0) == [e.id, d.id, c.id, b.id]  # since is inclusive
    assert await ids(until=30.0) == [b.id, a.id]  # until is exclusive
    assert await ids(since=20.0, until=40.0) == [c.id, b.id]
    assert await ids(kind="node.") == [b.id, a.id]
    assert await ids(kind="node") == [e.id, d.id, b.id, a.id]
    assert await ids(kind="node.down") == [a.id]
    assert await ids(kind="node_") == [e.id]  # _ and % are literal, not wildcards
    assert await ids(kind="n%") == []
    assert await ids(subject="sh-1") == [d.id, b.id, a.id]
    assert await ids(subject="sh") == [c.id]  # a subject is matched whole
    assert await ids(kind="node.", subject="sh-1", since=15.0) == [b.id]
    assert await ids(kind="", subject="") == [e.id, d.id, c.id, b.id, a.id]  # empty: no filter


async def test_limit_keeps_the_newest(log: EventLog) -> None:
    events = [event("node.down", "sh-1", float(i)) for i in range(10)]
    await write(log, *events)
    assert [r["at"] for r in await log.query(limit=3)] == [9.0, 8.0, 7.0]
    assert [r["at"] for r in await log.query(limit=2, until=5.0)] == [4.0, 3.0]
    assert len(await log.query(limit=100)) == 10


async def test_prune_deletes_what_is_older_than_the_cutoff(log: EventLog) -> None:
    await write(log, *(event("node.down", "sh-1", at) for at in (10.0, 20.0, 30.0)))
    assert await log.prune(20.0) == 1  # strictly older: the event at 20 stays
    assert await log.prune(20.0) == 0
    assert [r["at"] for r in await log.query()] == [30.0, 20.0]
    assert await log.prune(1e12) == 2
    assert await log.query() == []


async def test_run_writes_in_the_background_and_what_is_left_when_cancelled(
    backend: Backend,
) -> None:
    log = backend.event_log()
    await log.open()
    runner = asyncio.create_task(log.run(), name="event-log")
    first = event("node.down", "sh-1", 1.0)
    log.append(first)

    async def written() -> bool:
        return log.waiting == 0

    await poll_until(written, within=5, what="the batch written by run()")
    burst = [event("node.up", f"sh-{i}", 2.0 + i) for i in range(600)]
    for e in burst:
        log.append(e)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert log.waiting == 0  # written on the way out
    await log.close()

    again = backend.event_log()
    await again.open()
    assert len(await again.query(limit=1000)) == 601
    await again.close()


async def test_close_writes_what_waits_and_a_reopened_log_lists_everything(
    backend: Backend,
) -> None:
    log = backend.event_log()
    await log.open()
    events = [event("service.unavailable", "web", 100.0 + i, sites=["sh"]) for i in range(3)]
    await write(log, events[0])
    log.append(events[1])
    log.append(events[2])
    await log.close()

    again = backend.event_log()
    await again.open()
    await again.open()  # opening twice is harmless (migrations apply once)
    assert await again.query() == [listed(e) for e in reversed(events)]
    await again.close()


async def test_a_newer_schema_is_refused(backend: Backend) -> None:
    log = backend.event_log()
    await log.open()
    await log.close()
    await set_schema_version(backend, file="events.db", component="events", version=99)
    newer = backend.event_log()
    with pytest.raises(StateError, match=r"schema.*99.*newer than this nodevigil knows"):
        await newer.open()
    await newer.close()
