"""The SLA ledger's port (``sla.store.LedgerStore``): one contract, both backends.

Every test taking ``backend`` runs on a fresh SQLite state directory and on a fresh database
of a real PostgreSQL. Stores are called directly here, on the test's thread (the daemon calls
them on the ledger's own worker thread).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from nodevigil.core.config.schema import Database
from nodevigil.core.errors import StateError
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend
from nodevigil.state.postgres.pool import connect_kwargs, password
from nodevigil.state.sqlite.ledger import SqliteLedgerStore
from sla.errors import SlaError
from sla.ledger import Ledger
from sla.model import Cause, Charge, CreditRow, to_us
from sla.store import Adjustment, LedgerStore, StoredExclusion, StoredInterval
from tests.postgres_server import PostgresAddress

T0 = to_us(datetime(2026, 3, 1, 9, 0, tzinfo=UTC)) + 123_457  # a time with odd microseconds
MIN = 60_000_000
DAY = date(2026, 3, 1)


@contextmanager
def opened(backend: Backend) -> Iterator[LedgerStore]:
    """A store from the backend's factory, closed at the end."""
    store = backend.ledger_store()()
    try:
        yield store
    finally:
        store.close()


def set_schema_version(backend: Backend, version: int) -> None:
    """Pretend a newer nodevigil migrated the ledger's schema."""
    if isinstance(backend, SqliteBackend):
        con = sqlite3.connect(backend.state_dir / "ledger.db")
        con.execute(f"PRAGMA user_version={version}")
        con.close()
        return
    assert isinstance(backend, PostgresBackend)
    kwargs = connect_kwargs(backend.database, password(backend.database, None))
    with psycopg.connect(backend.database.url, autocommit=True, **kwargs) as conn:  # type: ignore[arg-type]
        sql = "UPDATE nodevigil_schema SET version = %s WHERE component = 'ledger'"
        assert conn.execute(sql, (version,)).rowcount == 1


def usd(customer: str, service: str, day: date, amount: str) -> Charge:
    return Charge(customer, service, day, Decimal(amount), "USD")


async def test_meta_is_stored_and_replaced(backend: Backend) -> None:
    with opened(backend) as store:
        with store.transaction():
            assert store.meta("settled_through") is None
            store.set_meta("settled_through", "2026-03-01")
        with store.transaction():
            store.set_meta("settled_through", "2026-03-02")
        with store.transaction():
            assert store.meta("settled_through") == "2026-03-02"


async def test_intervals_keep_microseconds_evidence_and_order(backend: Backend) -> None:
    with opened(backend) as store:
        with store.transaction():
            web = store.insert_interval(
                "web", T0, end_us=None, cause=Cause.PROVIDER,
                evidence='{"b": 1, "a": ["fra", "ams"]}', at=T0 + 1,
            )  # fmt: skip
            db = store.insert_interval(
                "db", T0 - 1, end_us=T0 + 999_999, cause=Cause.UNKNOWN, evidence="{}", at=T0
            )
            later = store.insert_interval(
                "db", T0 + 10 * MIN, end_us=None, cause=Cause.PROVIDER, evidence="{}", at=T0
            )
        assert len({web, db, later}) == 3
        with store.transaction():
            got = store.get_interval(web)
            assert got == StoredInterval(web, "web", T0, None, Cause.PROVIDER,
                                         {"b": 1, "a": ["fra", "ams"]})  # fmt: skip
            assert got is not None and list(got.evidence) == ["b", "a"]  # key order kept
            assert store.open_interval_of("web") == got
            assert store.open_interval_of("db") == store.get_interval(later)
            assert store.open_interval_of("api") is None
            assert store.get_interval(10**9) is None
            # oldest first; [start, end) overlaps, None = unbounded, open intervals reach on
            assert [i.id for i in store.intervals(None, None, None)] == [db, web, later]
            assert [i.id for i in store.intervals("db", None, None)] == [db, later]
            assert [i.id for i in store.intervals(None, T0 + 999_999, None)] == [web, later]
            assert [i.id for i in store.intervals(None, T0 + 999_998, None)] == [db, web, later]
            assert [i.id for i in store.intervals(None, None, T0)] == [db]
            assert [i.id for i in store.intervals(None, None, T0 + 1)] == [db, web]
            assert [i.id for i in store.intervals(None, None, None, True)] == [web, later]
            assert [i.id for i in store.intervals("db", None, None, True)] == [later]
        with store.transaction():
            store.update_interval(web, end_us=T0 + 90 * 1_000_000 + 7, at=T0 + 2)
            store.update_interval(db, cause=Cause.THIRD_PARTY, at=T0 + 2)
        with store.transaction():
            closed = store.get_interval(web)
            assert closed is not None and closed.end_us == T0 + 90_000_007
            assert store.open_interval_of("web") is None
            changed = store.get_interval(db)
            assert changed is not None and changed.cause is Cause.THIRD_PARTY
            assert changed.end_us == T0 + 999_999


async def test_one_open_interval_per_service_and_a_refusal_rolls_back(backend: Backend) -> None:
    with opened(backend) as store:
        with store.transaction():
            first = store.insert_interval(
                "web", T0, end_us=None, cause=Cause.PROVIDER, evidence="{}", at=T0
            )
        with pytest.raises(SlaError, match="refused"), store.transaction():
            store.set_meta("k", "written before the refusal")
            store.insert_interval(
                "web", T0 + 1, end_us=None, cause=Cause.PROVIDER, evidence="{}", at=T0
            )
        with store.transaction():  # still usable; nothing of the refused transaction stayed
            assert store.meta("k") is None
            assert [i.id for i in store.intervals("web", None, None)] == [first]
            # a closed interval of the same service is no conflict
            store.insert_interval("web", T0 - MIN, end_us=T0, cause=Cause.PROVIDER,
                                  evidence="{}", at=T0)  # fmt: skip


async def test_a_transaction_rolls_back_on_any_error(backend: Backend) -> None:
    with opened(backend) as store:
        with pytest.raises(RuntimeError, match="boom"), store.transaction():
            store.set_meta("k", "v")
            store.insert_interval("web", T0, end_us=None, cause=Cause.PROVIDER, evidence="{}",
                                  at=T0)  # fmt: skip
            store.upsert_charges([usd("acme", "web", DAY, "1.00")])
            store.insert_change(T0, "ops", "what", "note")
            raise RuntimeError("boom")
        with store.transaction():
            assert store.meta("k") is None
            assert store.intervals(None, None, None) == []
            assert store.charges(DAY, DAY) == []
        assert store.prune(2**62, date(9999, 1, 1))["changes"] == 0
        with store.transaction():
            store.set_meta("k", "v")
        with store.transaction():
            assert store.meta("k") == "v"


async def test_exclusions_for_some_or_all_services(backend: Backend) -> None:
    with opened(backend) as store:
        with store.transaction():
            some = store.insert_exclusion(
                T0, T0 + MIN, cause=Cause.SCHEDULED_MAINTENANCE, services=["web", "api"],
                note="announced upgrade", who="ops:anna", at=T0,
            )  # fmt: skip
            every = store.insert_exclusion(
                T0 - 5, T0 + 1, cause=Cause.FORCE_MAJEURE, services=[], note="", who="", at=T0
            )
        with store.transaction():
            both = store.exclusions(None, None)
            assert both == [
                StoredExclusion(every, T0 - 5, T0 + 1, Cause.FORCE_MAJEURE, frozenset(), "", ""),
                StoredExclusion(some, T0, T0 + MIN, Cause.SCHEDULED_MAINTENANCE,
                                frozenset({"web", "api"}), "announced upgrade", "ops:anna"),
            ]  # fmt: skip
            assert [e.id for e in store.exclusions(T0 + 1, None)] == [some]
            assert [e.id for e in store.exclusions(None, T0)] == [every]
            assert [e.id for e in store.exclusions(T0 + MIN, None)] == []


MONEY = ["48.00", "0.005", "0.01", "1.10", "12345678901234567890.123456789012345678",
         "0.000000000000000000000001", "0"]  # fmt: skip


async def test_charges_keep_money_exact_and_replace_by_key(backend: Backend) -> None:
    days = [DAY + timedelta(days=i) for i in range(len(MONEY))]
    with opened(backend) as store:
        with store.transaction():
            store.upsert_charges(usd("acme", "web", d, m) for d, m in zip(days, MONEY, strict=True))
            store.upsert_charges([usd("zeta", "db", DAY, "3.00"), usd("acme", "api", DAY, "2")])
        with store.transaction():
            got = {c.day: c.amount for c in store.charges(days[0], days[-1], "acme")
                   if c.service == "web"}  # fmt: skip
            assert [str(got[d]) for d in days] == [str(Decimal(m)) for m in MONEY]  # scale kept
            assert sum(got.values()) == sum(Decimal(m) for m in MONEY)
            assert {(c.customer, c.service) for c in store.charges(DAY, DAY)} == {
                ("acme", "web"), ("acme", "api"), ("zeta", "db")
            }  # fmt: skip
            assert [c.day for c in store.charges(days[1], days[2])] == days[1:3]  # inclusive
            assert store.services_of("acme") == {"web", "api"}
            assert store.services_of("nobody") == set()
            store.upsert_charges([Charge("acme", "web", DAY, Decimal("50.5"), "EUR")])
        with store.transaction():
            [replaced] = [c for c in store.charges(DAY, DAY, "acme") if c.service == "web"]
            assert (str(replaced.amount), replaced.currency) == ("50.5", "EUR")


async def test_settled_rows_freeze_and_hide_their_charges(backend: Backend) -> None:
    row = CreditRow("acme", "web", DAY, 2, 1440, Decimal("48.00"), Decimal("0.07"), "EUR")
    with opened(backend) as store:
        with store.transaction():
            store.upsert_charges([Charge("acme", "web", DAY, Decimal("48.00"), "EUR"),
                                  Charge("acme", "web", DAY + timedelta(1), Decimal("48.00"),
                                         "EUR")])  # fmt: skip
            store.put_settled([row], T0)
        with store.transaction():
            assert store.settled(DAY, DAY) == {("acme", "web", DAY): row}
            assert store.settled(DAY + timedelta(1), DAY + timedelta(9)) == {}
            unsettled = store.charges(DAY, DAY + timedelta(1), None, True)
            assert [c.day for c in unsettled] == [DAY + timedelta(1)]
            newer = CreditRow("acme", "web", DAY, 3, 1440, Decimal("48.00"),
                              Decimal("0.100000000000000000001"), "EUR")  # fmt: skip
            store.put_settled([newer], T0 + 1)
        with store.transaction():
            [(_, again)] = store.settled(DAY, DAY).items()
            assert again == newer and str(again.credit) == "0.100000000000000000001"


async def test_adjustments_are_listed_oldest_first(backend: Backend) -> None:
    first = Adjustment("acme", "web", DAY, 2, 3, Decimal("0.07"), Decimal("0.10"), "EUR",
                       "ops:anna", T0 + 1, "exclusion 1")  # fmt: skip
    second = Adjustment("beta", "db", DAY, 0, 1440, Decimal("0"), Decimal("48.00"), "EUR",
                        "nodevigil", T0, "unknown time")  # fmt: skip
    with opened(backend) as store:
        with store.transaction():
            store.insert_adjustment(first)
            store.insert_adjustment(second)
        assert store.adjustments() == [first, second]  # the daemon reads these outside one
        assert store.adjustments("beta") == [second]
        assert [str(a.new_credit) for a in store.adjustments()] == ["0.10", "48.00"]


async def test_prune_deletes_what_ended_before_the_cutoff_only(backend: Backend) -> None:
    cut, cut_day = T0, DAY
    with opened(backend) as store:
        with store.transaction():
            for end in (cut - 1, cut):  # ended just before, and exactly at, the cutoff
                store.insert_interval("web", end - MIN, end_us=end, cause=Cause.PROVIDER,
                                      evidence="{}", at=end)  # fmt: skip
                store.insert_exclusion(end - MIN, end, cause=Cause.THIRD_PARTY, services=[],
                                       note="", who="", at=end)  # fmt: skip
                store.insert_change(end, "ops", "what", "")
                store.insert_adjustment(
                    Adjustment(
                        "acme", "web", DAY, 0, 1, Decimal(0), Decimal("0.03"), "EUR", "ops", end, ""
                    )
                )
            store.insert_interval("db", cut - 10**12, end_us=None, cause=Cause.PROVIDER,
                                  evidence="{}", at=cut)  # open: never pruned  # fmt: skip
            for day in (cut_day - timedelta(1), cut_day):
                store.upsert_charges([usd("acme", "web", day, "1.00")])
                store.put_settled([CreditRow("acme", "web", day, 0, 1440, Decimal("1.00"),
                                             Decimal(0), "USD")], cut)  # fmt: skip
        with store.transaction():
            counts = store.prune(cut, cut_day)
        assert counts == {"intervals": 1, "exclusions": 1, "charges": 1, "settled": 1,
                          "adjustments": 1, "changes": 1}  # fmt: skip
        with store.transaction():
            assert [(i.service, i.end_us) for i in store.intervals(None, None, None)] == [
                ("db", None), ("web", cut)
            ]  # fmt: skip
            assert [e.end_us for e in store.exclusions(None, None)] == [cut]
            assert [c.day for c in store.charges(date.min, date.max)] == [cut_day]
            assert list(store.settled(date.min, date.max)) == [("acme", "web", cut_day)]
            assert [a.at_us for a in store.adjustments()] == [cut]
            assert store.prune(cut, cut_day) == dict.fromkeys(counts, 0)
            assert store.prune(cut + 1, cut_day)["changes"] == 1


async def test_reopening_keeps_everything(backend: Backend) -> None:
    adjustment = Adjustment("acme", "web", DAY, 1, 2, Decimal("0.03"), Decimal("0.07"), "EUR",
                            "ops", T0, "why")  # fmt: skip
    settled = CreditRow("acme", "web", DAY, 2, 1440, Decimal("48.00"), Decimal("0.07"), "EUR")
    with opened(backend) as store, store.transaction():
        store.set_meta("settled_through", "2026-03-01")
        iv = store.insert_interval("web", T0, end_us=None, cause=Cause.PROVIDER,
                                   evidence='{"sites": ["fra"]}', at=T0)  # fmt: skip
        ex = store.insert_exclusion(T0, T0 + 7, cause=Cause.CYBER_ATTACK, services=["web"],
                                    note="ddos", who="ops", at=T0)  # fmt: skip
        store.upsert_charges([Charge("acme", "web", DAY, Decimal("48.00"), "EUR")])
        store.put_settled([settled], T0)
        store.insert_adjustment(adjustment)
    with opened(backend) as store, store.transaction():
        assert store.meta("settled_through") == "2026-03-01"
        assert store.intervals(None, None, None) == [
            StoredInterval(iv, "web", T0, None, Cause.PROVIDER, {"sites": ["fra"]})
        ]
        assert store.exclusions(None, None) == [
            StoredExclusion(ex, T0, T0 + 7, Cause.CYBER_ATTACK, frozenset({"web"}), "ddos", "ops")
        ]
        assert store.charges(DAY, DAY) == [Charge("acme", "web", DAY, Decimal("48.00"), "EUR")]
        assert store.settled(DAY, DAY) == {("acme", "web", DAY): settled}
        assert store.adjustments() == [adjustment]
        new = store.insert_interval("db", T0, end_us=T0, cause=Cause.PROVIDER, evidence="{}",
                                    at=T0)  # fmt: skip
        assert new != iv


async def test_a_newer_schema_is_refused_with_a_clear_error(backend: Backend) -> None:
    with opened(backend):
        pass  # creates the schema
    set_schema_version(backend, 99)
    with pytest.raises(SlaError, match=r"version 99,? (is )?newer than this nodevigil knows \(1\)"):
        backend.ledger_store()()


# The worked example of docs/sla.md, and the spring-forward day, through the real Ledger.
BERLIN = "Europe/Berlin"


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def worked_example(
    store: Callable[[], LedgerStore],
) -> tuple[list[dict[str, str | int]], list[dict[str, str | int]]]:
    """The docs' example, settled, then a late exclusion: credit rows and adjustments."""
    clock = [_t("2026-03-02T12:00:00+01:00")]
    async with await Ledger.open(store, timezone=BERLIN, now=lambda: clock[0]) as ledger:
        await ledger.import_charges(
            [Charge("acme", "web", date(2026, 3, d), Decimal("48.00"), "EUR") for d in (1, 2, 29)]
        )
        await ledger.open_interval("web", _t("2026-03-01T23:58:30+01:00"))  # outage A
        await ledger.close_interval("web", _t("2026-03-02T00:01:10+01:00"))
        await ledger.open_interval("web", _t("2026-03-01T23:59:00+01:00"))  # B, a 2nd probe
        await ledger.close_interval("web", _t("2026-03-02T00:00:30+01:00"))
        await ledger.add_exclusion(
            _t("2026-03-01T23:59:00+01:00"), _t("2026-03-01T23:59:10+01:00"),
            "scheduled_maintenance", services=["web"], note="announced upgrade", who="ops",
        )  # fmt: skip
        await ledger.open_interval("web", _t("2026-03-29T01:30:00+01:00"))  # 2 h, DST day
        await ledger.close_interval("web", _t("2026-03-29T04:30:00+02:00"))
        clock[0] = _t("2026-04-01T00:00:00+02:00")
        assert len(await ledger.settle()) == 3
        first = [r.as_dict() for r in await ledger.credits(date(2026, 3, 1), date(2026, 3, 31))]
        # a late exclusion on a final day: an adjustment, never a silent rewrite
        await ledger.add_exclusion(
            _t("2026-03-29T01:30:00+01:00"), _t("2026-03-29T03:30:00+02:00"), "third_party",
            who="ops:anna", note="upstream",
        )  # fmt: skip
        later = [r.as_dict() for r in await ledger.credits(date(2026, 3, 29), date(2026, 3, 29))]
        adjustments = [a.as_dict() for a in await ledger.adjustments()]
    return first + later, adjustments


EXPECTED = [
    ("2026-03-01", 2, 1440, "0.07"),
    ("2026-03-02", 2, 1440, "0.07"),
    ("2026-03-29", 120, 1380, "4.17"),
    ("2026-03-29", 60, 1380, "2.09"),
]


async def test_the_worked_example_of_the_docs(backend: Backend) -> None:
    rows, adjustments = await worked_example(backend.ledger_store())
    got = [(r["date"], r["unavailable_minutes"], r["minutes_in_day"], r["credit"]) for r in rows]
    assert got == EXPECTED
    assert [(a["old_credit"], a["new_credit"]) for a in adjustments] == [("4.17", "2.09")]


async def test_the_same_credit_on_both_backends(tmp_path: Path, postgres: PostgresAddress) -> None:
    name = postgres.create_database()
    try:
        database = Database(url=postgres.url(name), password_file=postgres.password_file)
        pg = PostgresBackend(database, None, owner="t")
        on_postgres = await worked_example(pg.ledger_store())
    finally:
        postgres.drop_database(name)
    on_sqlite = await worked_example(SqliteBackend(tmp_path, owner="t").ledger_store())
    assert on_sqlite == on_postgres
    assert on_sqlite[0][0]["charge"] == "48.00"


# SQLite: files the first ledger made (before the shared migration helper) open unchanged.
OLD_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE intervals (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER,
    cause TEXT NOT NULL, evidence TEXT NOT NULL, created_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL);
CREATE INDEX intervals_start ON intervals (start_us);
CREATE INDEX intervals_end ON intervals (end_us);
CREATE UNIQUE INDEX intervals_open ON intervals (service) WHERE end_us IS NULL;
CREATE TABLE exclusions (
    id INTEGER PRIMARY KEY, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL,
    cause TEXT NOT NULL, services TEXT NOT NULL, note TEXT NOT NULL, who TEXT NOT NULL,
    created_us INTEGER NOT NULL);
CREATE TABLE charges (
    customer TEXT NOT NULL, service TEXT NOT NULL, day TEXT NOT NULL, amount TEXT NOT NULL,
    currency TEXT NOT NULL, PRIMARY KEY (customer, service, day));
CREATE INDEX charges_day ON charges (day);
CREATE TABLE settled (
    customer TEXT NOT NULL, service TEXT NOT NULL, day TEXT NOT NULL, minutes INTEGER NOT NULL,
    minutes_in_day INTEGER NOT NULL, charge TEXT NOT NULL, credit TEXT NOT NULL,
    currency TEXT NOT NULL, settled_us INTEGER NOT NULL, PRIMARY KEY (customer, service, day));
CREATE TABLE adjustments (
    id INTEGER PRIMARY KEY, customer TEXT NOT NULL, service TEXT NOT NULL, day TEXT NOT NULL,
    old_minutes INTEGER NOT NULL, new_minutes INTEGER NOT NULL, old_credit TEXT NOT NULL,
    new_credit TEXT NOT NULL, currency TEXT NOT NULL, who TEXT NOT NULL, at_us INTEGER NOT NULL,
    why TEXT NOT NULL);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY, at_us INTEGER NOT NULL, who TEXT NOT NULL, what TEXT NOT NULL,
    note TEXT NOT NULL);
PRAGMA user_version=1;
INSERT INTO meta VALUES ('settled_through', '2026-03-01');
INSERT INTO intervals VALUES (7, 'web', 1772355510000001, NULL, 'provider', '{"sites": ["fra"]}',
                              1, 1);
INSERT INTO charges VALUES ('acme', 'web', '2026-03-01', '48.00', 'EUR');
INSERT INTO settled VALUES ('acme', 'web', '2026-03-01', 2, 1440, '48.00', '0.07', 'EUR', 5);
"""


def test_a_ledger_file_of_the_first_schema_opens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    con = sqlite3.connect(path)
    con.executescript(OLD_V1)
    con.close()
    store = SqliteLedgerStore(path)
    try:
        with store.transaction():
            assert store.meta("settled_through") == "2026-03-01"
            [iv] = store.intervals(None, None, None)
            assert (iv.id, iv.start_us, iv.evidence) == (7, 1772355510000001, {"sites": ["fra"]})
            assert store.settled(DAY, DAY)[("acme", "web", DAY)].credit == Decimal("0.07")
            store.update_interval(7, end_us=1772355570000001, at=2)
    finally:
        store.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone() == (1,)
    assert con.execute("SELECT end_us FROM intervals").fetchall() == [(1772355570000001,)]
    con.close()


def test_an_unreachable_postgresql_is_a_state_error_the_daemon_retries() -> None:
    from nodevigil.state.postgres.ledger import PostgresLedgerStore

    with pytest.raises(StateError, match="cannot connect to PostgreSQL"):
        PostgresLedgerStore("postgresql://nv@127.0.0.1:1/nv", {"connect_timeout": 1})


# PostgreSQL only: a lost connection is re-opened, an outage is a StateError (retried later).


def _terminate_ledger_connections(postgres: PostgresAddress, database: str) -> int:
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        row = admin.execute(sql, (database,)).fetchone()
        return 0 if row is None else int(row[0])


@contextmanager
def postgres_store(postgres: PostgresAddress) -> Iterator[tuple[LedgerStore, str]]:
    name = postgres.create_database()
    database = Database(url=postgres.url(name), password_file=postgres.password_file)
    store = PostgresBackend(database, None, owner="t").ledger_store()()
    try:
        yield store, name
    finally:
        store.close()
        postgres.drop_database(name)


def test_a_connection_lost_while_idle_is_replaced_unnoticed(postgres: PostgresAddress) -> None:
    with postgres_store(postgres) as (store, name):
        with store.transaction():
            store.set_meta("k", "before")
        assert _terminate_ledger_connections(postgres, name) == 1  # as a server restart does
        with store.transaction():
            assert store.meta("k") == "before"
            store.set_meta("k", "after")
        assert _terminate_ledger_connections(postgres, name) == 1
        assert store.adjustments() == []  # outside a transaction() too


def test_a_connection_lost_in_a_transaction_is_a_state_error_then_reopened(
    postgres: PostgresAddress,
) -> None:
    with postgres_store(postgres) as (store, name):
        with pytest.raises(StateError, match="PostgreSQL unavailable"), store.transaction():
            store.set_meta("k", "lost")
            _terminate_ledger_connections(postgres, name)
            store.meta("k")
        with store.transaction():
            assert store.meta("k") is None  # never committed
            store.set_meta("k", "kept")
        with store.transaction():
            assert store.meta("k") == "kept"


async def test_postgresql_restarted_under_a_running_ledger(tmp_path: Path) -> None:
    from tests.postgres_server import run_postgres

    async with run_postgres(tmp_path) as server:
        database = Database(url=server.url, password_file=server.password_file)
        factory = PostgresBackend(database, None, owner="t").ledger_store()
        clock = [datetime(2026, 3, 1, 9, tzinfo=UTC)]
        async with await Ledger.open(factory, timezone=BERLIN, now=lambda: clock[0]) as ledger:
            first = await ledger.open_interval("web", clock[0])
            await server.stop()
            with pytest.raises(StateError, match="PostgreSQL"):
                await ledger.close_interval("web", clock[0] + timedelta(minutes=3))
            with pytest.raises(StateError, match="PostgreSQL"):
                await ledger.open_intervals()
            await server.start()
            # what the bridge's retry does: the same call again, now recorded
            assert await ledger.close_interval("web", clock[0] + timedelta(minutes=3)) == first
            [entry] = await ledger.ledger("web")
            assert entry.end == clock[0] + timedelta(minutes=3)
