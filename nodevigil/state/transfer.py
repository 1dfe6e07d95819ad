"""Moving one host's durable state between backends: ``nodevigil state export`` / ``import``.

The file is backend-neutral JSON lines (format ``nodevigil-state``, version 1; described in
docs/operations.md, "State on PostgreSQL"):

- line 1, the header: ``{"format": "nodevigil-state", "version": 1, "written_by": ...}``;
- then every table of ``TABLES``, in that order: one line
  ``{"table": "ledger.intervals", "columns": [...], "rows": N, "next_id": K}`` followed by N
  lines, each one row as a JSON array in the order of ``columns``.

Values are as stored: wall times are JSON numbers (seconds, the float the store holds; the
ledger's integer microseconds), money is a decimal string (``"288.00"``), days ISO dates, flags
``true``/``false``, service lists arrays; JSON bodies (events' data, the controller's book and
actions, the outbox's payload, interval evidence) stay the exact text written, so a message
retried after a move is byte-identical to its first attempt. ``next_id`` is the id the table
would hand out next, so no id is ever reused after a move. Rows are ordered by key, so the
same state always gives the same file, whichever backend it was read from.

Each backend reads and writes its own tables (``nodevigil.state.sqlite.transfer``,
``nodevigil.state.postgres.transfer``); this module holds what they share.

Not moved, on purpose: PostgreSQL's fencing epoch (``nodevigil_epoch``, component ``cluster``).
It says which leader of the cluster on that database may write, not what happened; the
target keeps its own, and a cluster's next leader advances it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from nodevigil import __version__
from nodevigil.core.errors import StateError
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend

FORMAT = "nodevigil-state"
VERSION = 1

Kind = Literal["text", "int", "real", "bool", "list", "day", "money", "json"]


@dataclass(frozen=True, slots=True)
class Table:
    """One logical table of the file: ``store.table``, its columns and their kinds."""

    name: str  # "<store>.<table>"; the table is SQLite's name for it
    columns: tuple[tuple[str, Kind], ...]
    key: tuple[str, ...]  # the order of its rows
    serial: str | None = None  # the integer key column the store numbers (``id``), if any

    @property
    def store(self) -> str:
        """The store (schema component) holding it: events, controller, incidents, ledger."""
        return self.name.split(".", 1)[0]

    @property
    def column_names(self) -> list[str]:
        """The columns, in file order."""
        return [name for name, _ in self.columns]


def _t(name: str, key: tuple[str, ...], *columns: str, serial: str | None = None) -> Table:
    """A table from ``column:kind`` strings (kind ``text`` when left out)."""
    parsed: list[tuple[str, Kind]] = []
    for column in columns:
        col, _, kind = column.partition(":")
        parsed.append((col, kind or "text"))  # type: ignore[arg-type]
    return Table(name, tuple(parsed), key, serial)


TABLES: tuple[Table, ...] = (
    _t("events.events", ("at", "id"),
       "id", "at:real", "kind", "subject", "vantage", "schema:int", "data:json"),
    _t("controller.overrides", ("kind", "name"),
       "kind", "name", "reason", "who", "since:real", "until:real"),
    _t("controller.books", ("kind", "name"), "kind", "name", "body:json"),
    _t("controller.outages", ("service",), "service", "started_at:real", "body:json"),
    _t("controller.actions", ("id",), "id:int", "at:real", "body:json", serial="id"),
    _t("incidents.incidents", ("id",),
       "id:int", "service", "state", "cause", "cause_note", "maintenance:bool",
       "started_at:real", "resolved_at:real", "openings:int", "opened_at:real",
       "first_notice_at:real", serial="id"),
    _t("incidents.updates", ("id",),
       "id:int", "incident:int", "at:real", "state", "message", "author", serial="id"),
    _t("incidents.outbox", ("created_at", "id"),
       "id", "notifier", "kind", "subject", "created_at:real", "data:json", "summary", "text",
       "incident:int", "customer", "step", "state", "claimed_by", "claimed_until:real",
       "not_before:real", "next_at:real", "attempts:int", "last_error", "delivered_at:real"),
    _t("incidents.notifiers", ("name",), "name", "disabled_at:real", "reason"),
    _t("incidents.maintenance", ("id",),
       "id:int", "start:real", "end:real", "services:list", "note", "source", "who",
       "config_key", "exclusion_id:int", "cancelled:bool", serial="id"),
    _t("incidents.ledger_outbox", ("seq",),
       "seq:int", "id", "kind", "services:list", "start_at:real", "end_at:real", "cause", "note",
       "who", "not_before:real", "incident_id:int", "window_id:int", "state", "error",
       serial="seq"),
    _t("ledger.meta", ("key",), "key", "value"),
    _t("ledger.intervals", ("id",),
       "id:int", "service", "start_us:int", "end_us:int", "cause", "evidence:json",
       "created_us:int", "updated_us:int", serial="id"),
    _t("ledger.exclusions", ("id",),
       "id:int", "start_us:int", "end_us:int", "cause", "services:list", "note", "who",
       "created_us:int", serial="id"),
    _t("ledger.charges", ("customer", "service", "day"),
       "customer", "service", "day:day", "amount:money", "currency"),
    _t("ledger.settled", ("customer", "service", "day"),
       "customer", "service", "day:day", "minutes:int", "minutes_in_day:int", "charge:money",
       "credit:money", "currency", "settled_us:int"),
    _t("ledger.adjustments", ("id",),
       "id:int", "customer", "service", "day:day", "old_minutes:int", "new_minutes:int",
       "old_credit:money", "new_credit:money", "currency", "who", "at_us:int", "why",
       serial="id"),
    _t("ledger.changes", ("id",), "id:int", "at_us:int", "who", "what", "note", serial="id"),
)  # fmt: skip
STORES = tuple(dict.fromkeys(t.store for t in TABLES))


@dataclass(slots=True)
class TableData:
    """One table's rows on their way: ``rows`` yields exactly ``count`` rows, in file order."""

    table: Table
    count: int
    next_id: int | None  # serial tables only
    rows: Iterator[list[Any]]


class StateTables(Protocol):
    """A backend's tables, read and written whole (the daemon must not run on them)."""

    where: str  # for messages: the state directory or the database

    def __enter__(self) -> StateTables: ...

    def __exit__(self, *exc: object) -> None: ...

    def dump(self) -> Iterator[TableData]:
        """Every table of ``TABLES`` in order, each from a consistent snapshot of its store."""
        ...

    def counts(self) -> dict[str, int]:
        """Rows per table (after bringing the schema up to date)."""
        ...

    def load(self, tables: Iterator[TableData], *, force: bool) -> dict[str, int]:
        """Write every table, one transaction per store (``force``: existing rows deleted
        first); ids kept and the next ids set; counts checked before each commit."""
        ...


def tables_for(backend: Backend) -> StateTables:
    """The tables of ``backend``'s state, for a whole-state export or import."""
    if isinstance(backend, SqliteBackend):
        from nodevigil.state.sqlite.transfer import SqliteTables

        return SqliteTables(backend.state_dir)
    if isinstance(backend, PostgresBackend):
        from nodevigil.state.postgres.transfer import PostgresTables

        return PostgresTables(backend.database, backend.base_dir)
    raise StateError(f"the {backend.name} backend cannot export or import state")


def export_state(source: StateTables, out: IO[str]) -> dict[str, int]:
    """Write ``source``'s whole state to ``out``; rows per table."""
    written: dict[str, int] = {}
    out.write(
        _line({"format": FORMAT, "version": VERSION, "written_by": f"nodevigil {__version__}"})
    )
    for data in source.dump():
        header = {"table": data.table.name, "columns": data.table.column_names,
                  "rows": data.count, "next_id": data.next_id}  # fmt: skip
        out.write(_line(header))
        n = 0
        for row in data.rows:
            out.write(_line(row))
            n += 1
        if n != data.count:
            raise StateError(f"{source.where}: {data.table.name} changed while exported")
        written[data.table.name] = n
    return written


def import_state(target: StateTables, path: Path, *, force: bool = False) -> dict[str, int]:
    """Load the file at ``path`` into ``target``; rows per table, as counted in the target.

    The whole file is checked first (format, every table, every count), so a truncated or
    foreign file changes nothing. A target holding any row is refused unless ``force``.
    """
    expected = check_file(path)
    present = {name: n for name, n in target.counts().items() if n}
    if present and not force:
        listed = ", ".join(f"{name} ({n})" for name, n in present.items())
        raise StateError(
            f"{target.where} is not empty: {listed}; import into an empty state, or give "
            "--force to replace it"
        )
    with _open(path) as f:
        loaded = target.load(_tables(f, path), force=force)
    for name, n in expected.items():
        if loaded.get(name) != n:
            raise StateError(f"{target.where}: {name} holds {loaded.get(name)} rows, not {n}")
    return loaded


def check_file(path: Path) -> dict[str, int]:
    """The rows per table a file declares, after checking its shape and counting its rows."""
    counts: dict[str, int] = {}
    with _open(path) as f:
        _header(f, path)
        expect = iter(TABLES)
        current: tuple[str, int] | None = None
        seen = 0
        for number, line in enumerate(f, start=2):
            if line.startswith("["):
                seen += 1
                continue
            if current is not None and seen != current[1]:
                raise StateError(f"{path}:{number}: {current[0]} has {seen} rows, not {current[1]}")
            table = next(expect, None)
            info = _table_header(line, table, path, number)
            current, seen = (info["table"], info["rows"]), 0
            counts[info["table"]] = info["rows"]
        if current is not None and seen != current[1]:
            raise StateError(f"{path}: {current[0]} has {seen} rows, not {current[1]} (cut short?)")
        missing = [t.name for t in TABLES if t.name not in counts]
        if missing:
            raise StateError(f"{path}: tables missing (cut short?): {', '.join(missing)}")
    return counts


def _tables(f: IO[str], path: Path) -> Iterator[TableData]:
    """The file's tables in order, each with a lazy iterator of its rows."""
    _header(f, path)
    for number, table in enumerate(TABLES, start=2):
        info = _table_header(f.readline(), table, path, number)
        count = int(info["rows"])
        yield TableData(table, count, info.get("next_id"), _rows(f, table, count, path))


def _rows(f: IO[str], table: Table, count: int, path: Path) -> Iterator[list[Any]]:
    width = len(table.columns)
    for _ in range(count):
        row = json.loads(f.readline())
        if not isinstance(row, list) or len(row) != width:
            raise StateError(f"{path}: a row of {table.name} does not have {width} values")
        yield row


def _header(f: IO[str], path: Path) -> None:
    try:
        head = json.loads(f.readline())
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise StateError(f"{path}: not a nodevigil state file (from `nodevigil state export`)")
    if head.get("version") != VERSION:
        raise StateError(
            f"{path}: state file version {head.get('version')}, this nodevigil reads version "
            f"{VERSION} ({head.get('written_by', 'unknown writer')})"
        )


def _table_header(line: str, table: Table | None, path: Path, number: int) -> dict[str, Any]:
    try:
        info = json.loads(line)
    except ValueError:
        info = None
    if table is None or not isinstance(info, dict) or info.get("table") != table.name:
        want = "the end of the file" if table is None else f"table {table.name}"
        raise StateError(f"{path}:{number}: expected {want}")
    if info.get("columns") != table.column_names or not isinstance(info.get("rows"), int):
        raise StateError(f"{path}:{number}: {table.name}: columns or row count do not match")
    return info


def _open(path: Path) -> IO[str]:
    try:
        return path.open(encoding="utf-8")
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from exc


def _line(value: object) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"  # ASCII: any text survives
