"""The shared database's tables read and written whole, for ``nodevigil state export``/``import``.

Names differ from the file's (SQLite's): ``controller_*``, ``ledger_*``, ``incident_updates``,
``notifiers_disabled``, ``maintenance_windows`` (``start_at``/``end_at``). An event is one JSON
body here, so its ``vantage`` and ``data`` are taken from the body and put back into it. Rows go
in with ``COPY`` (identity values kept), and each identity's sequence is set past the highest id
the source ever handed out. Text keys sort with ``COLLATE "C"`` (code points, as SQLite sorts),
so both backends write the same file for the same state.

A running daemon holds connections named ``nodevigil``: while one is connected to this
database, export and import are refused. Synchronous, on a connection of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from nodevigil.core.config.schema import Database
from nodevigil.core.errors import StateError
from nodevigil.state.postgres.components import (
    STEPS,
    connect,
    live_daemons,
    migrate_all,
    versions,
)
from nodevigil.state.transfer import TABLES, Table, TableData

Conn = psycopg.Connection[TupleRow]

# The schema version of each component that TABLES describes (postgres.components.STEPS).
COVERED = {"events": 1, "controller": 1, "incidents": 2, "ledger": 1}
# Components that are not state to move: the fencing epoch (``nodevigil_epoch``) belongs to
# the cluster running on this database, and a copy elsewhere would fence the wrong leaders.
NOT_MOVED = frozenset({"cluster", "leader_marks"})

SQL_NAMES = {
    "events.events": "events",
    "controller.overrides": "controller_overrides",
    "controller.books": "controller_books",
    "controller.outages": "controller_outages",
    "controller.actions": "controller_actions",
    "incidents.incidents": "incidents",
    "incidents.updates": "incident_updates",
    "incidents.outbox": "outbox",
    "incidents.notifiers": "notifiers_disabled",
    "incidents.maintenance": "maintenance_windows",
    "incidents.ledger_outbox": "ledger_outbox",
    "ledger.meta": "ledger_meta",
    "ledger.intervals": "ledger_intervals",
    "ledger.exclusions": "ledger_exclusions",
    "ledger.charges": "ledger_charges",
    "ledger.settled": "ledger_settled",
    "ledger.adjustments": "ledger_adjustments",
    "ledger.changes": "ledger_changes",
}
RENAMED = {
    ("incidents.maintenance", "start"): "start_at",
    ("incidents.maintenance", "end"): "end_at",
}
EVENTS = "events.events"
EVENT_COLUMNS = ("id", "at", "kind", "subject", "schema", "body")  # the table's own


def _columns(table: Table) -> list[str]:
    if table.name == EVENTS:
        return list(EVENT_COLUMNS)
    return [RENAMED.get((table.name, c), c) for c in table.column_names]


def _ident_list(names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _order(table: Table) -> sql.Composable:
    kinds = dict(table.columns)
    return sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"').format(sql.Identifier(k))
        if kinds[k] in ("text", "json")
        else sql.Identifier(RENAMED.get((table.name, k), k))
        for k in table.key
    )


def _to_file(table: Table, row: tuple[Any, ...]) -> list[Any]:
    if table.name == EVENTS:
        event_id, at, kind, subject, schema, body = row
        payload = json.loads(body)
        # The data's text as SQLite keeps it: json.dumps of the same value, default settings.
        data = json.dumps(payload.get("data", {}), default=str)
        return [event_id, at, kind, subject, str(payload.get("vantage", "")), schema, data]
    out = list(row)
    for i, (_, kind) in enumerate(table.columns):
        value = out[i]
        if value is None:
            continue
        if kind == "day":
            out[i] = value.isoformat()
        elif kind == "money":
            out[i] = str(value)
        elif kind == "list":
            out[i] = list(value)
    return out


def _from_file(table: Table, row: list[Any]) -> tuple[Any, ...]:
    if table.name == EVENTS:
        event_id, at, kind, subject, vantage, schema, data = row
        # Event.as_dict()'s form, written as json.dumps writes it; the data's text kept as is.
        head = {"id": event_id, "kind": kind, "subject": subject, "at": at, "vantage": vantage}
        body = json.dumps(head)[:-1] + ', "data": ' + data + "}"
        return (event_id, at, kind, subject, schema, body)
    out = list(row)
    for i, (_, kind) in enumerate(table.columns):
        value = out[i]
        if value is None:
            continue
        if kind == "day":
            out[i] = date.fromisoformat(value)
        elif kind == "money":
            out[i] = Decimal(value)
        elif kind == "list":
            out[i] = [str(v) for v in value]
    return tuple(out)


def _next_id(conn: Conn, table: Table) -> int:
    """The id the identity hands out next: past its rows, and past any id it ever gave."""
    name = SQL_NAMES[table.name]
    query = sql.SQL(
        "SELECT coalesce(max({key}), 0), pg_sequence_last_value(pg_get_serial_sequence(%s, %s)) "
        "FROM {table}"
    ).format(key=sql.Identifier(str(table.serial)), table=sql.Identifier(name))
    row = conn.execute(query, (name, table.serial)).fetchone()
    assert row is not None
    top, last = row
    return max(int(top), int(last or 0)) + 1


def _set_next_id(conn: Conn, table: Table, next_id: int | None) -> None:
    name = SQL_NAMES[table.name]
    query = sql.SQL(
        "SELECT setval(pg_get_serial_sequence(%s, %s), greatest(coalesce(max({key}), 0), %s, 1), "
        "greatest(coalesce(max({key}), 0), %s) > 0) FROM {table}"
    ).format(key=sql.Identifier(str(table.serial)), table=sql.Identifier(name))
    want = (next_id or 1) - 1
    conn.execute(query, (name, table.serial, want, want))


def check_covered(where: str) -> None:
    """Refuse when a component's schema has grown past what the transfer knows: a fact the
    file cannot carry must stop the move, never vanish in it."""
    for component, steps in STEPS.items():
        if component in NOT_MOVED:
            continue
        if COVERED[component] != len(steps):
            raise StateError(
                f"{where}: state transfer covers schema version {COVERED[component]} of "
                f"{component}, this nodevigil's is {len(steps)}: the transfer needs updating"
            )


class PostgresTables:
    """The shared database's nodevigil tables, on a connection of this command's own."""

    def __init__(self, database: Database, base_dir: Path | None) -> None:
        self.database = database
        self.base_dir = base_dir
        self.where = "PostgreSQL"
        self._conn: Conn | None = None

    def __enter__(self) -> PostgresTables:
        conn = connect(self.database, self.base_dir, purpose="transfer")
        self.where = f"PostgreSQL {conn.info.host}:{conn.info.port}/{conn.info.dbname}"
        try:
            daemons = live_daemons(conn)
        except psycopg.Error as exc:
            conn.close()
            raise StateError(f"{self.where}: {exc}") from exc
        if daemons:
            conn.close()
            raise StateError(
                f"{self.where} is in use by a running nodevigil ({daemons} connections named "
                "'nodevigil' in pg_stat_activity); stop every nodevigil on it first"
            )
        self._conn = conn
        return self

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def conn(self) -> Conn:
        """The open connection (inside ``with``)."""
        if self._conn is None:
            raise RuntimeError("PostgresTables is used outside `with`")
        return self._conn

    def dump(self) -> Iterator[TableData]:
        """Every table in order, from one snapshot of the whole database."""
        check_covered(self.where)
        found = {v.component: v for v in versions(self.conn)}
        stale = [
            v
            for v in found.values()
            if v.state in ("older", "newer") and v.component not in NOT_MOVED
        ]
        if stale:
            v = stale[0]
            raise StateError(
                f"{self.where}: schema of {v.component} is at version {v.version}, this "
                f"nodevigil exports version {v.known}: run `nodevigil db migrate` with the "
                "nodevigil that matches it"
            )
        try:
            with self.conn.transaction():
                self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                for table in TABLES:
                    if found[table.store].state == "absent":
                        yield TableData(table, 0, 1 if table.serial else None, iter(()))
                    else:
                        yield self._dump(table)
        except psycopg.Error as exc:
            raise StateError(f"{self.where}: cannot export: {exc}") from exc

    def _dump(self, table: Table) -> TableData:
        name = sql.Identifier(SQL_NAMES[table.name])
        count_row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
        count = 0 if count_row is None else int(count_row[0])
        next_id = _next_id(self.conn, table) if table.serial else None
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            _ident_list(_columns(table)), name, _order(table)
        )

        def rows() -> Iterator[list[Any]]:
            with self.conn.cursor(name=f"dump_{SQL_NAMES[table.name]}") as cursor:
                cursor.itersize = 2000
                cursor.execute(query)
                for row in cursor:
                    yield _to_file(table, row)

        return TableData(table, count, next_id, rows())

    def counts(self) -> dict[str, int]:
        """Rows per table, the schema brought up to date first."""
        check_covered(self.where)
        migrate_all(self.conn)
        out: dict[str, int] = {}
        for table in TABLES:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SQL_NAMES[table.name]))
            row = self.conn.execute(query).fetchone()
            out[table.name] = 0 if row is None else int(row[0])
        return out

    def load(self, tables: Iterator[TableData], *, force: bool) -> dict[str, int]:
        """One transaction per store; on any error that store is left as it was."""
        migrate_all(self.conn)
        loaded: dict[str, int] = {}
        pending = iter(tables)
        data = next(pending, None)
        try:
            while data is not None:
                store = data.table.store
                with self.conn.transaction():
                    if force:
                        names = [SQL_NAMES[t.name] for t in TABLES if t.store == store]
                        self.conn.execute(sql.SQL("TRUNCATE {}").format(_ident_list(names)))
                    while data is not None and data.table.store == store:
                        loaded[data.table.name] = self._load(data)
                        data = next(pending, None)
        except psycopg.Error as exc:
            raise StateError(f"{self.where}: cannot import: {exc}") from exc
        return loaded

    def _load(self, data: TableData) -> int:
        table = data.table
        name = sql.Identifier(SQL_NAMES[table.name])
        copy = sql.SQL("COPY {} ({}) FROM STDIN").format(name, _ident_list(_columns(table)))
        with self.conn.cursor() as cursor, cursor.copy(copy) as into:
            for values in data.rows:
                into.write_row(_from_file(table, values))
        if table.serial:
            _set_next_id(self.conn, table, data.next_id)
        row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
        n = 0 if row is None else int(row[0])
        if n != data.count:
            raise StateError(f"{self.where}: {table.name} holds {n} rows after the import, "
                             f"not {data.count}")  # fmt: skip
        return n
