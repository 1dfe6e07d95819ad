"""A state directory's tables read and written whole, for ``nodevigil state export``/``import``.

The file's tables carry SQLite's own table and column names, so only values change form here:
flags are integers in SQLite, service lists JSON text. Ids of ``AUTOINCREMENT`` tables come
with ``sqlite_sequence``, so an id handed out once is never handed out again after a move.
The state lock is held throughout: the daemon cannot run on the directory meanwhile.
Synchronous: it runs in a command of its own (or a thread), never on the daemon's event loop.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodevigil.core.errors import StateError
from nodevigil.state.lock import StateLock
from nodevigil.state.sqlite.components import FILES, connected, migrate_all, versions
from nodevigil.state.transfer import STORES, TABLES, Table, TableData

# The schema version of each file that TABLES describes (nodevigil.state.sqlite.components).
COVERED = {"events": 2, "controller": 1, "incidents": 3, "ledger": 1}


def _sql_name(table: Table) -> str:
    return table.name.split(".", 1)[1]


def _columns(table: Table) -> str:
    return ", ".join(f'"{name}"' for name in table.column_names)


def _to_file(table: Table, row: tuple[Any, ...]) -> list[Any]:
    out = list(row)
    for i, (_, kind) in enumerate(table.columns):
        if out[i] is None:
            continue
        if kind == "bool":
            out[i] = bool(out[i])
        elif kind == "list":
            out[i] = json.loads(out[i])
    return out


def _from_file(table: Table, row: list[Any]) -> tuple[Any, ...]:
    out = list(row)
    for i, (_, kind) in enumerate(table.columns):
        if out[i] is None:
            continue
        if kind == "bool":
            out[i] = int(out[i])
        elif kind == "list":
            out[i] = json.dumps(list(out[i]))  # as the stores write it
    return tuple(out)


def _autoincrement(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (name,))
    found = row.fetchone()
    return found is not None and "AUTOINCREMENT" in str(found[0]).upper()


def _next_id(conn: sqlite3.Connection, table: Table) -> int:
    """The id the table hands out next: past its rows, and past any id it ever gave."""
    name = _sql_name(table)
    top = conn.execute(f'SELECT coalesce(max("{table.serial}"), 0) FROM "{name}"').fetchone()
    highest = int(top[0])
    if _autoincrement(conn, name):
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (name,)).fetchone()
        if row is not None:
            highest = max(highest, int(row[0]))
    return highest + 1


def _set_next_id(conn: sqlite3.Connection, table: Table, next_id: int | None) -> None:
    name = _sql_name(table)
    if next_id is None or not _autoincrement(conn, name):
        return  # a plain INTEGER PRIMARY KEY hands out max(id) + 1: nothing to keep
    top = conn.execute(f'SELECT coalesce(max("{table.serial}"), 0) FROM "{name}"').fetchone()
    conn.execute("DELETE FROM sqlite_sequence WHERE name=?", (name,))
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
        (name, max(int(top[0]), next_id - 1)),
    )


def check_covered(state_dir: Path) -> None:
    """Refuse when a store's schema has grown past what the transfer knows: a fact the file
    cannot carry must stop the move, never vanish in it."""
    for component, (_, steps) in FILES.items():
        if COVERED[component] != len(steps):
            raise StateError(
                f"{state_dir}: state transfer covers schema version {COVERED[component]} of "
                f"{component}, this nodevigil's is {len(steps)}: the transfer needs updating"
            )


class SqliteTables:
    """The four files of a state directory, under its lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.where = str(self.state_dir)
        self._lock = StateLock(self.state_dir)

    def __enter__(self) -> SqliteTables:
        self._lock.acquire()  # a StateError naming the pid while the daemon runs here
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def dump(self) -> Iterator[TableData]:
        """Every table in order, each file read in one transaction (a consistent snapshot)."""
        check_covered(self.state_dir)
        schemas = {v.component: v for v in versions(self.state_dir)}
        stale = [v for v in schemas.values() if v.state in ("older", "newer")]
        if stale:
            v = stale[0]
            raise StateError(
                f"{v.where}: schema version {v.version}, this nodevigil exports version "
                f"{v.known}: run `nodevigil db migrate` with the nodevigil that matches it"
            )
        for store in STORES:
            tables = [t for t in TABLES if t.store == store]
            if schemas[store].state == "absent":
                for table in tables:  # never created: empty
                    yield TableData(table, 0, 1 if table.serial else None, iter(()))
                continue
            with connected(self.state_dir / FILES[store][0]) as conn:
                conn.execute("BEGIN")
                try:
                    for table in tables:
                        yield self._dump(conn, table)
                finally:
                    conn.execute("COMMIT")

    @staticmethod
    def _dump(conn: sqlite3.Connection, table: Table) -> TableData:
        name = _sql_name(table)
        (count,) = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        order = ", ".join(f'"{k}"' for k in table.key)
        cursor = conn.execute(f'SELECT {_columns(table)} FROM "{name}" ORDER BY {order}')
        rows = (_to_file(table, r) for r in cursor)
        return TableData(table, int(count), _next_id(conn, table) if table.serial else None, rows)

    def counts(self) -> dict[str, int]:
        """Rows per table, the files created and migrated first."""
        check_covered(self.state_dir)
        migrate_all(self.state_dir)
        out: dict[str, int] = {}
        for store in STORES:
            with connected(self.state_dir / FILES[store][0]) as conn:
                for table in (t for t in TABLES if t.store == store):
                    (n,) = conn.execute(f'SELECT count(*) FROM "{_sql_name(table)}"').fetchone()
                    out[table.name] = int(n)
        return out

    def load(self, tables: Iterator[TableData], *, force: bool) -> dict[str, int]:
        """One transaction per file; on any error that file is left as it was."""
        migrate_all(self.state_dir)
        loaded: dict[str, int] = {}
        pending = iter(tables)
        data = next(pending, None)
        while data is not None:
            store = data.table.store
            path = self.state_dir / FILES[store][0]
            with connected(path) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if force:
                        for table in (t for t in TABLES if t.store == store):
                            conn.execute(f'DELETE FROM "{_sql_name(table)}"')
                    while data is not None and data.table.store == store:
                        loaded[data.table.name] = self._load(conn, data, path)
                        data = next(pending, None)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        return loaded

    @staticmethod
    def _load(conn: sqlite3.Connection, data: TableData, path: Path) -> int:
        table = data.table
        name = _sql_name(table)
        marks = ", ".join("?" for _ in table.columns)
        conn.executemany(
            f'INSERT INTO "{name}" ({_columns(table)}) VALUES ({marks})',
            (_from_file(table, row) for row in data.rows),
        )
        if table.serial:
            _set_next_id(conn, table, data.next_id)
        (n,) = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        if n != data.count:
            raise StateError(f"{path}: {table.name} holds {n} rows after the import, not "
                             f"{data.count}")  # fmt: skip
        return int(n)
