"""Every SQLite store's file and migrations, for ``db migrate``/``db status`` and state transfer.

The stores migrate their own file when they open; this applies the same steps (the same
``nodevigil.state.sqlite.schema.migrate``) to all four files at once, without the stores.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from nodevigil.core.errors import StateError
from nodevigil.state.schemas import Migrated, SchemaVersion
from nodevigil.state.sqlite import controller, eventlog, incidents_db, ledger
from nodevigil.state.sqlite.schema import migrate

# component -> (file in state_dir, migration steps)
FILES: dict[str, tuple[str, Sequence[str]]] = {
    "events": ("events.db", eventlog.STEPS),
    "controller": ("failover.db", controller.STEPS),
    "incidents": ("incidents.db", incidents_db.STEPS),
    "ledger": ("ledger.db", ledger.MIGRATIONS),
}


@contextlib.contextmanager
def connected(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to one store's file as the stores open it (WAL, autocommit), closed after."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StateError(f"{path}: {exc}") from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=5000")
        yield conn
    except sqlite3.Error as exc:
        raise StateError(f"{path}: {exc}") from exc
    finally:
        conn.close()


def versions(state_dir: Path) -> list[SchemaVersion]:
    """Each store's schema version; a missing file is ``absent`` (nothing is created)."""
    found = []
    for component, (name, steps) in FILES.items():
        path = state_dir / name
        version: int | None = None
        if path.exists():
            try:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
                    version = int(c.execute("PRAGMA user_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise StateError(f"{path}: {exc}") from exc
        found.append(SchemaVersion(component, str(path), version, len(steps)))
    return found


def migrate_all(state_dir: Path) -> list[Migrated]:
    """Bring every store's file to this nodevigil's schema; nothing changes when one is newer."""
    for found in versions(state_dir):
        if found.state == "newer":  # the store's own refusal, before any file is touched
            name, steps = FILES[found.component]
            with connected(state_dir / name) as conn:
                migrate(conn, steps, path=state_dir / name)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"{state_dir}: cannot create the state directory: {exc}") from exc
    done = []
    for component, (name, steps) in FILES.items():
        path = state_dir / name
        with connected(path) as conn:
            applied = migrate(conn, steps, path=path)
        done.append(Migrated(component, str(path), len(steps) - applied, len(steps)))
    return done
