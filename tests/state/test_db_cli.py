"""``nodevigil db migrate|status`` and ``nodevigil state export|import``, as operators run them."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from nodevigil.app.cli import main
from nodevigil.state.postgres.components import STEPS
from nodevigil.state.sqlite.components import FILES
from tests.postgres_server import PostgresAddress
from tests.state.test_transfer import fill, sqlite_at

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def database(postgres: PostgresAddress) -> Iterator[str]:
    """A fresh, empty PostgreSQL database's name."""
    name = postgres.create_database()
    try:
        yield name
    finally:
        postgres.drop_database(name)


def sqlite_config(tmp_path: Path, state_dir: Path) -> Path:
    path = tmp_path / "sqlite.yaml"
    path.write_text(f"state_dir: {state_dir}\n")
    return path


def postgres_config(tmp_path: Path, postgres: PostgresAddress, name: str) -> Path:
    path = tmp_path / "postgres.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'unused'}\n"
        f"database:\n  url: {postgres.url(name)}\n  password_file: {postgres.password_file}\n"
    )
    return path


def nodevigil(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The command as operators run it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "nodevigil", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_db_migrate_creates_every_file_of_an_empty_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    config = sqlite_config(tmp_path, state_dir)
    assert main(["db", "migrate", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    for component, (file, steps) in FILES.items():
        assert f"{component:<11} 0 -> {len(steps)}  created" in out
        with contextlib.closing(sqlite3.connect(state_dir / file)) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(steps)
    assert main(["db", "migrate", "-c", str(config)]) == 0
    assert capsys.readouterr().out.count("up to date") == 4
    assert main(["db", "status", "-c", str(config)]) == 0
    assert capsys.readouterr().out.count("current") == 4


def test_db_migrate_on_a_fresh_postgresql_database(
    tmp_path: Path, postgres: PostgresAddress, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = postgres_config(tmp_path, postgres, database)
    assert main(["db", "status", "-c", str(config)]) == 0
    # The four stores, the cluster's fencing epoch and its leader marks.
    assert capsys.readouterr().out.count("not created yet") == len(STEPS) == 6
    assert main(["db", "migrate", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    for component, steps in STEPS.items():
        assert f"{component:<11} 0 -> {len(steps)}  created" in out
    dsn = postgres.admin_dsn.replace("dbname=postgres", f"dbname={database}")
    with psycopg.connect(dsn) as conn:
        stored = dict(conn.execute("SELECT component, version FROM nodevigil_schema").fetchall())
        assert conn.execute("SELECT count(*) FROM ledger_intervals").fetchone() == (0,)
    assert stored == {c: len(s) for c, s in STEPS.items()}
    assert main(["db", "status", "-c", str(config)]) == 0
    assert capsys.readouterr().out.count("current") == 6


def test_a_newer_schema_is_refused_with_the_stores_message(
    tmp_path: Path, postgres: PostgresAddress, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    config = sqlite_config(tmp_path, state_dir)
    assert main(["db", "migrate", "-c", str(config)]) == 0
    with contextlib.closing(sqlite3.connect(state_dir / "incidents.db")) as db:
        db.execute("PRAGMA user_version=9")
    capsys.readouterr()
    assert main(["db", "migrate", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    known = len(FILES["incidents"][1])
    assert f"incidents.db: schema version 9 is newer than this nodevigil knows ({known})" in err
    assert main(["db", "status", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert "NEWER than this nodevigil knows" in captured.out
    assert "newer than this nodevigil knows: incidents: upgrade nodevigil" in captured.err

    config = postgres_config(tmp_path, postgres, database)
    assert main(["db", "migrate", "-c", str(config)]) == 0
    dsn = postgres.admin_dsn.replace("dbname=postgres", f"dbname={database}")
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE nodevigil_schema SET version = 7 WHERE component = 'ledger'")
        conn.execute("UPDATE nodevigil_schema SET version = 0 WHERE component = 'events'")
    capsys.readouterr()
    assert main(["db", "migrate", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    known = len(STEPS["ledger"])
    assert f"schema of ledger is at version 7, newer than this nodevigil knows ({known})" in err
    with psycopg.connect(dsn) as conn:  # refused before anything changed
        row = conn.execute("SELECT version FROM nodevigil_schema WHERE component = 'events'")
        assert row.fetchone() == (0,)


async def test_export_and_import_through_the_command(
    tmp_path: Path, postgres: PostgresAddress, database: str
) -> None:
    source = sqlite_at(tmp_path / "source")
    await fill(source)
    from_sqlite = sqlite_config(tmp_path, source.state_dir)
    to_postgres = postgres_config(tmp_path, postgres, database)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"

    done = nodevigil("state", "export", "--to", a, "-c", from_sqlite)
    assert done.returncode == 0, done.stderr
    assert "exported" in done.stdout and (a.stat().st_mode & 0o777) == 0o600
    done = nodevigil("state", "import", a, "-c", to_postgres)
    assert done.returncode == 0, done.stderr
    assert "events.events" in done.stdout and "(counts checked)" in done.stdout
    done = nodevigil("state", "import", a, "-c", to_postgres)
    assert done.returncode == 1 and "is not empty" in done.stderr
    done = nodevigil("state", "export", "--to", b, "-c", to_postgres)
    assert done.returncode == 0, done.stderr
    assert b.read_bytes() == a.read_bytes()
    done = nodevigil("db", "status", "-c", to_postgres)
    assert done.returncode == 0 and done.stdout.count("current") == 6  # with the cluster's
