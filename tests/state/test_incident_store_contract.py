"""The incident store's contract (``failover.incidents.ports.IncidentStore``), on both backends.

Each test runs on SQLite and on PostgreSQL (the ``backend`` fixture). The outbox's claims by
several owners are in ``test_outbox_claims_contract``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from failover.incidents.model import Incident, IncidentState, Outgoing, Window
from failover.incidents.ports import IncidentStore, LedgerChange
from nodevigil.core.errors import StateError
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend
from tests.state.incident_helpers import T0, outgoing, plan, store_on


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[IncidentStore]:
    """The backend's incident store, opened."""
    made = backend.incident_store()
    await made.open()
    try:
        yield made
    finally:
        await made.close()


async def open_web(store: IncidentStore, at: float = T0, **steps: float) -> Incident:
    """Open an incident of ``web`` with one notification per plan step."""
    return await store.open_incident(
        "web",
        started_at=at - 30,
        at=at,
        maintenance=False,
        cause="provider",
        message="web is unavailable",
        outgoing=plan(*steps.items()),
    )


def ids(rows: list[object]) -> list[str]:
    """Message ids of outbox rows."""
    return [r.message.id for r in rows]  # type: ignore[attr-defined]


# --- incidents ------------------------------------------------------------------------------


async def test_an_incident_opens_with_its_update_and_notifications_in_one_transaction(
    store: IncidentStore,
) -> None:
    incident = await open_web(store, s0=0, s1=600)
    assert incident.state is IncidentState.INVESTIGATING and incident.is_open
    assert (incident.service, incident.started_at, incident.opened_at) == ("web", T0 - 30, T0)
    assert incident.openings == 1 and incident.first_notice_at is None
    assert await store.get(incident.id) == incident
    [update] = await store.updates(incident.id)
    assert (update.message, update.author, update.state) == (
        "web is unavailable",
        "nodevigil",
        IncidentState.INVESTIGATING,
    )
    rows = await store.notifications(incident=incident.id)
    assert sorted(ids(rows)) == [f"i{incident.id}-1-s0", f"i{incident.id}-1-s1"]
    assert {(r.customer, r.state) for r in rows} == {("acme", "pending")}

    def broken(incident: Incident) -> list[Outgoing]:
        raise RuntimeError("the plan could not be built")

    with pytest.raises(RuntimeError):
        await store.open_incident(
            "api",
            started_at=T0,
            at=T0,
            maintenance=True,
            cause="provider",
            message="x",
            outgoing=broken,
        )
    # All or nothing: no incident of ``api`` without its notifications.
    assert [i.service for i in await store.incidents()] == ["web"]


async def test_one_open_incident_per_service_and_errors_are_state_errors(
    store: IncidentStore,
) -> None:
    await open_web(store)
    with pytest.raises(StateError):
        await open_web(store, at=T0 + 1)


async def test_reopen_resolve_and_the_plan_steps_a_resolution_cancels(
    store: IncidentStore,
) -> None:
    incident = await open_web(store, s0=0, s1=600, update=700)
    resolved, cancelled = await store.resolve_incident(
        incident.id,
        resolved_at=T0 + 100,
        at=T0 + 120,
        message="back",
        author="nodevigil",
        outgoing=plan(("resolve", 0)),
    )
    # s1 was due after the resolution: cancelled. s0 (due) and a non-plan step stay.
    assert cancelled == 1
    assert resolved.state is IncidentState.RESOLVED and resolved.resolved_at == T0 + 100
    states = {r.message.id: r.state for r in await store.notifications(incident=incident.id)}
    base = f"i{incident.id}-1"
    assert states == {
        f"{base}-s0": "pending",
        f"{base}-s1": "cancelled",
        f"{base}-update": "pending",
        f"{base}-resolve": "pending",
    }
    assert await store.last_resolved("web") == resolved
    assert await store.last_resolved("api") is None

    again = await store.reopen_incident(
        incident.id, at=T0 + 200, message="failed again", outgoing=plan(("s0", 0), ("s1", 600))
    )
    assert again.is_open and again.openings == 2 and again.opened_at == T0 + 200
    assert again.state is IncidentState.INVESTIGATING and again.id == incident.id
    # A resolution stamped before the reopening (a clock stepped back) never cancels the
    # steps the reopening made due: only those due after max(at, opened_at).
    _, cancelled = await store.resolve_incident(
        incident.id,
        resolved_at=T0 + 150,
        at=T0 + 150,
        message="back",
        author="ops",
        outgoing=plan(),
    )
    assert cancelled == 1  # s1 of the second opening; s0 (due at the reopening) stays
    states = {r.message.id: r.state for r in await store.notifications(incident=incident.id)}
    assert states[f"i{incident.id}-2-s0"] == "pending"
    assert states[f"i{incident.id}-2-s1"] == "cancelled"
    authors = [(u.author, u.state) for u in await store.updates(incident.id)]
    assert authors == [  # by time: the resolution stamped at T0 + 150 before the reopening
        ("nodevigil", IncidentState.INVESTIGATING),
        ("nodevigil", IncidentState.RESOLVED),
        ("ops", IncidentState.RESOLVED),
        ("nodevigil", IncidentState.INVESTIGATING),
    ]


async def test_updates_causes_and_the_first_notice(store: IncidentStore) -> None:
    incident = await open_web(store)
    updated = await store.add_update(
        incident.id,
        at=T0 + 10,
        state=IncidentState.IDENTIFIED,
        message="a switch failed",
        author="alice",
        outgoing=plan(("update", 0)),
    )
    assert updated.state is IncidentState.IDENTIFIED
    same = await store.add_update(
        incident.id, at=T0 + 20, state=None, message="still", author="bob", outgoing=plan()
    )
    assert same.state is IncidentState.IDENTIFIED
    tagged = await store.set_cause(
        incident.id, cause="third_party", note="the carrier", at=T0 + 30, author="alice"
    )
    assert (tagged.cause, tagged.cause_note) == ("third_party", "the carrier")
    timeline = [(u.at, u.message, u.author) for u in await store.updates(incident.id)]
    assert timeline[1:] == [
        (T0 + 10, "a switch failed", "alice"),
        (T0 + 20, "still", "bob"),
        (T0 + 30, "cause set to third_party: the carrier", "alice"),
    ]
    assert ids(await store.notifications(incident=incident.id)) == [f"i{incident.id}-1-update"]
    first = await store.record_first_notice(incident.id, T0 + 5)
    assert first is not None and first.first_notice_at == T0 + 5
    assert await store.record_first_notice(incident.id, T0 + 6) is None
    got = await store.get(incident.id)
    assert got is not None and got.first_notice_at == T0 + 5
    assert await store.get(incident.id + 1000) is None
    with pytest.raises(LookupError):
        await store.add_update(
            incident.id + 1000, at=T0, state=None, message="", author="", outgoing=plan()
        )


async def test_incidents_are_listed_newest_first_by_filter(store: IncidentStore) -> None:
    made = []
    for n, service in enumerate(["web", "api", "db"]):
        made.append(
            await store.open_incident(
                service,
                started_at=T0 + n * 100,
                at=T0 + n * 100,
                maintenance=service == "db",
                cause="provider",
                message="down",
                outgoing=plan(),
            )
        )
    await store.resolve_incident(
        made[0].id, resolved_at=T0 + 50, at=T0 + 50, message="", author="", outgoing=plan()
    )
    listed = await store.incidents()
    assert [i.service for i in listed] == ["db", "api", "web"]
    assert listed[0].maintenance and not listed[1].maintenance
    assert [i.service for i in await store.incidents(open_only=True)] == ["db", "api"]
    assert [i.service for i in await store.incidents(services=["web", "db"])] == ["db", "web"]
    assert await store.incidents(services=[]) == []
    assert [i.service for i in await store.incidents(since=T0 + 60)] == ["db", "api"]
    assert [i.service for i in await store.incidents(since=T0 + 50)] == ["db", "api", "web"]
    assert [i.service for i in await store.incidents(limit=1)] == ["db"]


# --- the outbox -----------------------------------------------------------------------------


async def test_enqueue_writes_an_id_once(store: IncidentStore) -> None:
    assert await store.enqueue([]) == 0
    assert await store.enqueue([outgoing("a", T0), outgoing("b", T0 + 10)]) == 2
    assert await store.enqueue([outgoing("a", T0 + 99), outgoing("c", T0)]) == 1
    [a] = [r for r in await store.notifications() if r.message.id == "a"]
    assert a.not_before == a.next_at == T0 and a.attempts == 0 and a.last_error == ""
    assert a.incident is None and a.customer is None and a.step is None


async def test_a_notification_keeps_its_id_and_body_through_retries(store: IncidentStore) -> None:
    data = {"service": "web", "nested": {"b": [1, 2], "a": None}, "z": "ü"}
    await store.enqueue([outgoing("m1", T0, data=data, incident=7, customer="acme", step="s0")])
    assert await store.due(T0 - 1) == []
    [first] = await store.claim_due(T0)
    assert first.message.data == data and first.message.summary == "summary of m1"
    assert (first.incident, first.customer, first.step) == (7, "acme", "s0")
    await store.mark_retry("m1", 1, T0 + 30, "HTTP 503 " + "x" * 1000)
    [row] = await store.notifications()
    assert (row.attempts, row.next_at, row.state) == (1, T0 + 30, "pending")
    assert row.last_error.startswith("HTTP 503") and len(row.last_error) == 500
    assert await store.claim_due(T0 + 29) == []
    [second] = await store.claim_due(T0 + 30)
    assert second.message == first.message and second.attempts == 1
    await store.mark_delivered("m1", T0 + 31, 2)
    [row] = await store.notifications(state="delivered")
    assert (row.delivered_at, row.attempts, row.last_error) == (T0 + 31, 2, "")
    assert await store.due(T0 + 10_000) == [] and await store.next_due_at() is None


async def test_dead_letters_are_kept_and_requeued_by_an_operator(store: IncidentStore) -> None:
    await store.enqueue([outgoing("m1", T0), outgoing("m2", T0)])
    await store.claim_due(T0)
    await store.mark_dead("m1", 3, "gave up")
    [dead] = await store.notifications(state="dead")
    assert (dead.message.id, dead.attempts, dead.last_error) == ("m1", 3, "gave up")
    assert not await store.requeue("m2", T0 + 5)  # only a dead one goes back in line
    assert await store.requeue("m1", T0 + 5)
    assert ids(await store.due(T0 + 5)) == ["m1"]  # m2 is still claimed
    [row] = [r for r in await store.notifications() if r.message.id == "m1"]
    assert (row.state, row.next_at, row.message.created_at) == ("pending", T0 + 5, T0 + 5)


async def test_due_is_oldest_first_and_stats_count_due_and_scheduled(
    store: IncidentStore,
) -> None:
    await store.enqueue([outgoing("late", T0 + 600), outgoing("b", T0 + 2), outgoing("a", T0 + 1)])
    assert await store.next_due_at() == T0 + 1
    assert ids(await store.due(T0 + 10)) == ["a", "b"]
    assert ids(await store.due(T0 + 10, limit=1)) == ["a"]
    assert await store.outbox_stats(T0 + 10) == (2, 1, T0 + 1)
    await store.claim_due(T0 + 10, limit=1)
    assert await store.outbox_stats(T0 + 10) == (2, 1, T0 + 1)  # claimed is still pending
    assert await store.outbox_stats(T0) == (0, 3, None)
    listed = await store.notifications(limit=2)
    assert ids(listed) == ["late", "b"]  # newest first


async def test_a_disabled_notifier_is_remembered_until_enabled(
    backend: Backend, store: IncidentStore
) -> None:
    await store.disable_notifier("hook", T0, "HTTP 410 Gone")
    await store.disable_notifier("hook", T0 + 1, "HTTP 410 Gone again")
    again = store_on(backend, "test-host")
    await again.open()
    try:
        assert await again.disabled_notifiers() == {"hook": (T0 + 1, "HTTP 410 Gone again")}
        assert await again.enable_notifier("hook")
        assert not await again.enable_notifier("hook")
        assert await store.disabled_notifiers() == {}
    finally:
        await again.close()


# --- maintenance windows and retention ------------------------------------------------------


async def test_windows_are_declared_once_cancelled_before_start_and_marked_excluded(
    store: IncidentStore,
) -> None:
    api = await store.add_window(
        start=T0 + 3600, end=T0 + 7200, services=["web", "api"], note="upgrade", source="api",
        who="alice",
    )  # fmt: skip
    assert api.services == ("web", "api") and not api.cancelled and api.exclusion_id is None
    config = dict(start=T0, end=T0 + 60, services=["db"], note="n", source="config", who="cfg")
    first = await store.add_window(**config, config_key="w1")  # type: ignore[arg-type]
    second = await store.add_window(**config, config_key="w1")  # type: ignore[arg-type]
    assert first == second
    assert [w.id for w in await store.windows()] == [first.id, api.id]  # by start
    assert await store.cancel_window(first.id, T0 + 1) is None  # already begun
    cancelled = await store.cancel_window(api.id, T0)
    assert cancelled is not None and cancelled.cancelled
    assert await store.cancel_window(api.id, T0) is None
    assert [w.id for w in await store.windows()] == [first.id]
    assert len(await store.windows(include_cancelled=True)) == 2
    await store.mark_window_excluded(first.id, 42)
    [marked] = await store.windows()
    assert marked.exclusion_id == 42 and marked.as_dict()["excluded_in_ledger"]


async def test_prune_keeps_what_is_open_pending_or_recent(store: IncidentStore) -> None:
    old = await open_web(store, s0=0)
    await store.claim_due(T0)
    await store.mark_delivered(f"i{old.id}-1-s0", T0 + 1, 1)
    await store.resolve_incident(
        old.id, resolved_at=T0 + 10, at=T0 + 10, message="", author="", outgoing=plan()
    )
    live = await store.open_incident(
        "api", started_at=T0, at=T0, maintenance=False, cause="provider", message="",
        outgoing=plan(("s0", 0)),
    )  # fmt: skip
    await store.enqueue([outgoing("loose-done", T0), outgoing("loose-pending", T0)])
    await store.claim_due(T0)
    await store.mark_delivered("loose-done", T0, 1)
    await store.add_window(start=T0, end=T0 + 5, services=["web"], note="", source="api", who="")
    await store.add_window(
        start=T0, end=T0 + 5, services=["web"], note="", source="config", who="", config_key="k"
    )
    removed = await store.prune(T0 + 1000)
    # The old incident, its update and its delivered notice, the delivered loose one, and the
    # API window; the config window is the configuration's, the live incident is open.
    assert removed == 6
    assert [i.id for i in await store.incidents()] == [live.id]
    assert sorted(ids(await store.notifications())) == sorted(["loose-pending", f"i{live.id}-1-s0"])
    assert [w.source for w in await store.windows()] == ["config"]
    assert await store.prune(T0 + 1000) == 0


# --- schema ---------------------------------------------------------------------------------


async def test_a_newer_schema_is_refused_with_a_clear_error(backend: Backend) -> None:
    store = backend.incident_store()
    await store.open()
    await store.close()
    if isinstance(backend, SqliteBackend):
        import sqlite3

        with sqlite3.connect(backend.state_dir / "incidents.db") as conn:
            conn.execute("PRAGMA user_version = 99")
        conn.close()
    else:
        assert isinstance(backend, PostgresBackend)
        async with backend.pool.connection() as pg:
            await pg.execute(
                "UPDATE nodevigil_schema SET version = 99 WHERE component = 'incidents'"
            )
    newer = backend.incident_store()
    with pytest.raises(StateError, match="newer than this nodevigil knows"):
        await newer.open()
    await newer.close()


async def test_opening_twice_migrates_once(backend: Backend, store: IncidentStore) -> None:
    await open_web(store)
    again = store_on(backend, "test-host")
    await again.open()
    try:
        assert [i.service for i in await again.incidents()] == ["web"]
    finally:
        await again.close()


async def test_a_sqlite_file_of_before_versions_upgrades_and_frees_its_old_claims(
    tmp_path: Path,
) -> None:
    import sqlite3

    from nodevigil.state.sqlite.incidents import SqliteIncidentStore
    from nodevigil.state.sqlite.incidents_db import STEPS

    path = tmp_path / "incidents.db"
    conn = sqlite3.connect(path)
    conn.executescript(STEPS[0])  # the schema as it was, at user_version 0
    conn.execute(
        "INSERT INTO outbox (id, notifier, kind, subject, created_at, data, summary, text, "
        "claimed, not_before, next_at) VALUES ('m1', 'hook', 'node.down', 'a', ?, '{}', '', '', "
        "1, ?, ?)",
        (T0, T0, T0),
    )
    conn.commit()
    conn.close()
    store = SqliteIncidentStore(path, owner="host")
    await store.open()
    try:
        # The old process-wide claim meant "free at the next start": it is due at once.
        assert ids(await store.claim_due(T0)) == ["m1"]
    finally:
        await store.close()


# --- the SLA ledger's outbox ----------------------------------------------------------------


def change_for(
    kind: str, *, services: tuple[str, ...], start: float, end: float | None, **extra: Any
) -> Any:
    """A ``ledger`` callback writing a LedgerChange of ``kind`` for an incident or window."""

    def make(subject: Incident | Window) -> LedgerChange:
        key = "incident" if isinstance(subject, Incident) else "window"
        return LedgerChange(
            id=f"{kind}-{subject.id}-{extra.get('cause', '')}",
            kind=kind,  # type: ignore[arg-type]
            services=services,
            start=start,
            end=end,
            cause=extra.get("cause", "scheduled_maintenance"),
            note=f"{key} {subject.id}",
            who="ops",
            not_before=extra.get("not_before", start),
            **{key: subject.id},
        )

    return make


async def test_a_cause_commits_with_its_pending_ledger_change(store: IncidentStore) -> None:
    incident = await open_web(store)
    tagged = await store.set_cause(
        incident.id, cause="telecom_failure", note="carrier", at=T0 + 5, author="ops",
        ledger=change_for("cause", services=("web",), start=incident.started_at, end=None,
                          cause="telecom_failure", not_before=T0 + 5),
    )  # fmt: skip
    assert tagged.cause == "telecom_failure"
    (change,) = await store.ledger_changes(T0 + 5)
    assert change == LedgerChange(
        id=f"cause-{incident.id}-telecom_failure", kind="cause", services=("web",),
        start=incident.started_at, end=None, cause="telecom_failure",
        note=f"incident {incident.id}", who="ops", not_before=T0 + 5, incident=incident.id,
    )  # fmt: skip
    assert await store.ledger_changes(T0 + 4) == []  # not due before it was written
    await store.set_cause(
        incident.id, cause="force_majeure", note="", at=T0 + 6, author="ops",
        ledger=change_for("cause", services=("web",), start=incident.started_at, end=None,
                          cause="force_majeure", not_before=T0 + 6),
    )  # fmt: skip
    assert [c.cause for c in await store.ledger_changes(T0 + 10)] == [
        "telecom_failure",
        "force_majeure",
    ]  # in the order written
    assert await store.ledger_change_applied(change.id)
    assert not await store.ledger_change_applied(change.id)  # once
    assert [c.cause for c in await store.ledger_changes(T0 + 10)] == ["force_majeure"]
    # Without a callback (a caller with nothing for the ledger) nothing is written.
    await store.set_cause(incident.id, cause="provider", note="", at=T0 + 7, author="ops")
    assert len(await store.ledger_changes(T0 + 10)) == 1


async def test_a_window_commits_with_its_exclusion_due_at_its_start(
    store: IncidentStore,
) -> None:
    exclusion = dict(services=("web",), start=T0 + 60, end=T0 + 120)
    window = await store.add_window(
        start=T0 + 60, end=T0 + 120, services=["web"], note="n", source="config", who="cfg",
        config_key="k", ledger=change_for("exclusion", **exclusion),  # type: ignore[arg-type]
    )  # fmt: skip
    again = await store.add_window(
        start=T0 + 60, end=T0 + 120, services=["web"], note="n", source="config", who="cfg",
        config_key="k", ledger=change_for("exclusion", **exclusion),  # type: ignore[arg-type]
    )  # fmt: skip
    assert again == window
    assert await store.ledger_changes(T0 + 59) == []  # not begun: still cancellable
    (change,) = await store.ledger_changes(T0 + 60)  # written once, for the key
    assert (change.kind, change.window, change.services) == ("exclusion", window.id, ("web",))
    assert await store.ledger_change_applied(change.id, exclusion_id=9)
    (marked,) = await store.windows()
    assert marked.exclusion_id == 9
    assert await store.ledger_changes(T0 + 60) == []


async def test_cancelling_a_window_cancels_its_exclusion_and_refused_changes_wait_no_more(
    store: IncidentStore,
) -> None:
    later = await store.add_window(
        start=T0 + 600, end=T0 + 700, services=["web"], note="", source="api", who="ops",
        ledger=change_for("exclusion", services=("web",), start=T0 + 600, end=T0 + 700),
    )  # fmt: skip
    assert await store.cancel_window(later.id, T0) is not None
    assert await store.ledger_changes(T0 + 1000) == []
    bad = await store.add_window(
        start=T0, end=T0 + 10, services=["web"], note="", source="api", who="ops",
        ledger=change_for("exclusion", services=("web",), start=T0, end=T0 + 10),
    )  # fmt: skip
    (change,) = await store.ledger_changes(T0)
    await store.ledger_change_refused(change.id, "no such cause")
    assert await store.ledger_changes(T0 + 1000) == []
    assert not await store.ledger_change_applied(change.id)
    assert [w.exclusion_id for w in await store.windows() if w.id == bad.id] == [None]
    assert await store.prune(T0 + 10_000) >= 3  # the windows and the changes no longer pending
    assert await store.prune(T0 + 10_000) == 0
