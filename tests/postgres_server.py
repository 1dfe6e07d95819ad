"""A real PostgreSQL server for tests: initdb in a temporary directory, on an ephemeral port.

The server refuses to run as root, so under root (CI) it runs as Debian's ``postgres`` user (or
``nobody``), in a directory of its own that the user owns; tests connect over TCP on loopback
with a password (scram-sha-256), as nodevigil would in production. The server runs in the
foreground as this process's child, so a test can pause (SIGSTOP), kill or restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.failover.daemons import free_port, poll_until

PASSWORD = "nodevigil-test-db-password"  # a test server on loopback, gone after the test
USER = "nodevigil"
DATABASE = "nodevigil"


def _bindir() -> Path | None:
    """Debian keeps initdb and postgres out of PATH, under /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


BINDIR = _bindir()


def _run_as() -> tuple[int, int] | None:
    """The (uid, gid) the server runs as: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and neither 'postgres' nor 'nobody' exists")


@dataclass
class PostgresServer:
    """A running server: its address, credentials and the process."""

    port: int
    home: Path  # owned by the server's user: data directory, socket directory, log
    owner: tuple[int, int] | None
    process: asyncio.subprocess.Process | None = None
    password_file: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        """A libpq URL without the password (nodevigil reads it from ``password_file``)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        """A libpq connection string with the password, for the tests' own connections."""
        return f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname={DATABASE}"

    @property
    def admin_dsn(self) -> str:
        """The same login on the ``postgres`` database, which exists from initdb on."""
        return self.dsn.replace(f"dbname={DATABASE}", "dbname=postgres")

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def _user(self) -> dict[str, int]:
        return {} if self.owner is None else {"user": self.owner[0], "group": self.owner[1]}

    async def start(self) -> None:
        """Start the server and wait until it takes connections."""
        assert BINDIR is not None
        log = self.log.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                str(BINDIR / "postgres"),
                "-D", str(self.data),
                "-p", str(self.port),
                "-k", str(self.home),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",  # a test server: a crash of the machine is not tested here
                "-c", "full_page_writes=off",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                **self._user(),  # type: ignore[arg-type]
            )  # fmt: skip
        finally:
            log.close()
        await poll_until(self.accepts, within=30, what="PostgreSQL taking connections")

    async def accepts(self) -> bool:
        """Whether a connection succeeds now (False while starting, paused or stopped)."""
        if self.process is None or self.process.returncode is not None:
            return False
        try:
            conn = await psycopg.AsyncConnection.connect(self.admin_dsn, connect_timeout=2)
        except psycopg.OperationalError:
            return False
        await conn.close()
        return True

    async def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server: SIGINT is PostgreSQL's fast shutdown, SIGKILL a crash."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        """Stop, then start on the same port and data."""
        await self.stop()
        await self.start()

    def pause(self) -> None:
        """SIGSTOP the postmaster: connections hang, as with a partitioned database."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def _initdb(server: PostgresServer) -> None:
    assert BINDIR is not None
    pwfile = server.home / "initdb.pw"
    pwfile.write_text(PASSWORD + "\n")
    if server.owner is not None:
        os.chown(pwfile, *server.owner)
    proc = await asyncio.create_subprocess_exec(
        str(BINDIR / "initdb"),
        "-D", str(server.data), "-U", USER, f"--pwfile={pwfile}",
        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        **server._user(),  # type: ignore[arg-type]
    )  # fmt: skip
    out, _ = await proc.communicate()
    pwfile.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"initdb failed ({proc.returncode}):\n{out.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def run_postgres(workdir: Path) -> AsyncIterator[PostgresServer]:
    """A fresh PostgreSQL with an empty database ``nodevigil`` for the length of the block.

    ``workdir`` receives ``db.password`` (what a nodevigil configuration's ``password_file``
    points at); the server's own files live in a directory its user owns.
    """
    if BINDIR is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    owner = _run_as()
    home = Path(tempfile.mkdtemp(prefix="nodevigil-pg-"))
    if owner is not None:
        os.chown(home, *owner)
    server = PostgresServer(free_port(), home, owner)
    server.password_file = workdir / "db.password"
    server.password_file.write_text(PASSWORD + "\n")
    server.password_file.chmod(0o600)
    try:
        await _initdb(server)
        await server.start()
        async with await psycopg.AsyncConnection.connect(server.admin_dsn, autocommit=True) as conn:
            await conn.execute(f"CREATE DATABASE {DATABASE}")
        yield server
    finally:
        await server.stop(signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class PostgresAddress:
    """Where a running server takes connections, and how to make a fresh database on it."""

    port: int
    password_file: Path

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=postgres"

    def url(self, database: str) -> str:
        """A libpq URL of ``database`` without the password (it is in ``password_file``)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database made by ``create_database`` (its connections are ended first)."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def postgres_for_session(workdir: Path) -> Iterator[PostgresAddress]:
    """One server for a whole test session (no event loop needed): each test makes its own
    database on it with ``create_database()``. Started with plain subprocesses."""
    if BINDIR is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    owner = _run_as()
    user = {} if owner is None else {"user": owner[0], "group": owner[1]}
    home = Path(tempfile.mkdtemp(prefix="nodevigil-pg-"))
    if owner is not None:
        os.chown(home, *owner)
    pwfile = home / "initdb.pw"
    pwfile.write_text(PASSWORD + "\n")
    if owner is not None:
        os.chown(pwfile, *owner)
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [str(BINDIR / "initdb"), "-D", str(home / "data"), "-U", USER, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, **user,  # type: ignore[arg-type]
        )  # fmt: skip
        with (home / "server.log").open("ab") as log:
            process = subprocess.Popen(
                [str(BINDIR / "postgres"), "-D", str(home / "data"), "-p", str(port),
                 "-k", str(home), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, **user,  # type: ignore[arg-type]
            )  # fmt: skip
        address = PostgresAddress(port, workdir / "db.password")
        address.password_file.write_text(PASSWORD + "\n")
        address.password_file.chmod(0o600)
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(address.admin_dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (home / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"PostgreSQL did not start:\n{tail}") from None
                time.sleep(0.05)
        yield address
    finally:
        if process is not None:
            process.kill()
            process.wait()
        shutil.rmtree(home, ignore_errors=True)
