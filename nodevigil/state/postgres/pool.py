"""The connection pool every PostgreSQL store of one process shares, and the errors it raises.

psycopg 3 with psycopg-pool: asyncio-native, libpq underneath (so a multi-host URL with
``target_session_attrs=read-write`` finds the primary after a failover), typed rows.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from nodevigil.core.config.schema import Database, SecretRef
from nodevigil.core.config.secrets import load_secret
from nodevigil.core.errors import StateError

# What a PostgreSQL store may raise when the server is away or refuses: callers retry later.
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, StateError)


def password(db: Database, base_dir: Path | None) -> str | None:
    """The database password from its file or environment variable; a ConfigError names it."""
    if db.password_file is None and db.password_env is None:
        return None
    ref = SecretRef(secret_file=db.password_file, secret_env=db.password_env)
    key = "database.password_file" if db.password_file else "database.password_env"
    return load_secret(key, ref, base_dir, "text")  # as check-config reads it


def connect_kwargs(db: Database, secret: str | None) -> dict[str, object]:
    """What every connection is opened with, besides the URL."""
    kwargs: dict[str, object] = {
        "connect_timeout": max(1, round(db.connect_timeout)),
        "application_name": "nodevigil",
        # A server that vanished without closing (a partition, a dead host) is noticed in
        # seconds, not after the kernel's two hours: keepalives, and a cap on unacknowledged
        # data. (A paused but reachable server still answers TCP: see docs/reliability.md.)
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
    }
    if secret is not None:
        kwargs["password"] = secret
    return kwargs


async def open_pool(
    db: Database, base_dir: Path | None, *, wait: bool = True
) -> AsyncConnectionPool:
    """An open pool of ``database.pool_size`` connections; with ``wait``, a StateError when
    the server cannot be reached within ``connect_timeout`` (the daemon then refuses to start)."""
    pool = AsyncConnectionPool(
        db.url,
        kwargs=connect_kwargs(db, password(db, base_dir)),
        min_size=1,
        max_size=db.pool_size,
        open=False,
        name="nodevigil",
        timeout=db.connect_timeout,
        # After a restart of the server every pooled connection is dead: check each one as it
        # is handed out, so no store call fails on a connection the pool could have replaced.
        check=AsyncConnectionPool.check_connection,
        # Give up reconnecting in the background at once: a store asking for a connection
        # opens a new one (prompt recovery), and a down server is reported by the stores.
        reconnect_timeout=0,
    )
    await pool.open(wait=False)
    if wait:
        try:
            await pool.wait(timeout=db.connect_timeout)
        except Exception as exc:
            await pool.close()
            raise StateError(f"database.url: cannot connect to PostgreSQL: {exc}") from exc
    return pool
