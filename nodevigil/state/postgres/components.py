"""Every PostgreSQL store's migrations, for ``db migrate``/``db status`` and state transfer.

The stores migrate their component when they first use the database; this applies the same
steps (``nodevigil.state.postgres.schema.migrate_sync``) to every component at once, on a
connection of its own (the commands run without the daemon's pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from nodevigil.core.config.schema import Database
from nodevigil.core.errors import StateError
from nodevigil.state.postgres import (
    controller,
    epoch,
    eventlog,
    incidents_db,
    leader_marks,
    ledger,
)
from nodevigil.state.postgres.pool import connect_kwargs, password
from nodevigil.state.postgres.schema import migrate_sync
from nodevigil.state.schemas import Migrated, SchemaVersion

STEPS: dict[str, Sequence[str]] = {
    eventlog.COMPONENT: eventlog.STEPS,
    controller.COMPONENT: controller.STEPS,
    incidents_db.COMPONENT: incidents_db.STEPS,
    ledger.COMPONENT: ledger.MIGRATIONS,
    epoch.COMPONENT: epoch.STEPS,  # the fencing epoch of a cluster's leader
    leader_marks.COMPONENT: leader_marks.STEPS,  # when each leader was last alive
}
DAEMON = "nodevigil"  # the application_name of the daemon's connections (pool.connect_kwargs)


def connect(
    database: Database, base_dir: Path | None, *, purpose: str
) -> psycopg.Connection[TupleRow]:
    """A connection (autocommit) named ``nodevigil-<purpose>``; a StateError when unreachable."""
    kwargs: dict[str, Any] = connect_kwargs(database, password(database, base_dir))
    kwargs["application_name"] = f"nodevigil-{purpose}"
    try:
        return psycopg.connect(database.url, autocommit=True, **kwargs)
    except psycopg.Error as exc:
        raise StateError(f"database.url: cannot connect to PostgreSQL: {exc}") from exc


def where(conn: psycopg.Connection[TupleRow]) -> str:
    """The database as operators name it: ``host:port/dbname``."""
    info = conn.info
    return f"{info.host}:{info.port}/{info.dbname}"


def versions(conn: psycopg.Connection[TupleRow]) -> list[SchemaVersion]:
    """Each component's schema version (None: never migrated)."""
    try:
        row = conn.execute("SELECT to_regclass('nodevigil_schema') IS NOT NULL").fetchone()
        stored: dict[str, int] = {}
        if row is not None and row[0]:
            for component, version in conn.execute(
                "SELECT component, version FROM nodevigil_schema"
            ):
                stored[component] = int(version)
    except psycopg.Error as exc:
        raise StateError(f"PostgreSQL: cannot read the schema versions: {exc}") from exc
    here = where(conn)
    return [SchemaVersion(c, here, stored.get(c), len(s)) for c, s in STEPS.items()]


def migrate_all(conn: psycopg.Connection[TupleRow]) -> list[Migrated]:
    """Bring every component to this nodevigil's schema; nothing changes when one is newer."""
    before = versions(conn)
    for found in before:
        if found.state == "newer":  # the stores' own refusal (a StateError), before any change
            migrate_sync(conn, found.component, STEPS[found.component])
    done = []
    try:
        for found in before:
            steps = STEPS[found.component]
            applied = migrate_sync(conn, found.component, steps)
            done.append(Migrated(found.component, found.where, len(steps) - applied, len(steps)))
    except psycopg.Error as exc:
        raise StateError(f"PostgreSQL: cannot migrate the schema: {exc}") from exc
    return done


def live_daemons(conn: psycopg.Connection[TupleRow]) -> int:
    """How many connections of a running nodevigil daemon this database has now."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = %s AND pid <> pg_backend_pid()",
        (DAEMON,),
    ).fetchone()
    return 0 if row is None else int(row[0])
