"""The fencing epoch in PostgreSQL: the database itself refuses a deposed leader's writes.

One row, ``nodevigil_epoch``, holds the epoch of the newest leader that wrote (the etcd leader
key's ``create_revision``, ``nodevigil.core.authority``). A new leader advances it once, in a
short transaction of its own (``UPDATE ... WHERE epoch < mine``, inserted when absent: it never
moves back). Every leader write transaction then reads it ``FOR SHARE`` before writing and
aborts with ``EpochFenced`` unless it holds exactly this process's epoch.

Why this fences: the advance takes the row's exclusive lock, so it waits for every leader
transaction that already read the row (they commit before the new epoch does), and every one
that reads it afterwards sees the newer epoch and writes nothing. A leader paused inside such a
transaction would hold up the advance: ``idle_in_transaction_session_timeout`` (``IDLE_LIMIT``)
lets the server end that session, and the advance waits at most ``ADVANCE_WAIT`` before it fails
(a StateError, retried by the next write).

Without an authority (``fence`` never called: SQLite, tests) or with a single host's (``Sole``:
no epoch, always may act) nothing is read or written: the stores behave as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg.rows import TupleRow

from nodevigil.core.authority import Authority, Fenced
from nodevigil.core.errors import StateError
from nodevigil.state.postgres.schema import migrate

COMPONENT = "cluster"
STEPS = (
    """
    CREATE TABLE nodevigil_epoch (
        id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),  -- one row at most
        epoch BIGINT NOT NULL,
        holder TEXT NOT NULL,
        advanced_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
)

IDLE_LIMIT = "10s"  # a leader's session idle inside a fenced transaction longer than this ends
ADVANCE_WAIT = "3s"  # how long a new leader's advance waits for older transactions to finish

_ADVANCE = (
    "INSERT INTO nodevigil_epoch (id, epoch, holder) VALUES (true, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, holder = excluded.holder, "
    "advanced_at = now() WHERE nodevigil_epoch.epoch < excluded.epoch"
)
_READ = "SELECT epoch FROM nodevigil_epoch"
# The share lock is what makes a concurrent advance wait for this transaction to end.
_HOLD = (
    "SELECT e.epoch FROM nodevigil_epoch e, "
    "set_config('idle_in_transaction_session_timeout', %s, true) FOR SHARE OF e"
)

AsyncConn = psycopg.AsyncConnection[TupleRow]
SyncConn = psycopg.Connection[TupleRow]


class EpochFenced(StateError, Fenced):
    """A leader write refused: a newer leader's epoch holds the database, or this process
    holds no lease. Nothing of the transaction was written; never retried as such."""

    def __init__(self, message: str, *, mine: int | None, held: int | None) -> None:
        super().__init__(message)
        self.mine = mine  # this process's epoch (None: it holds no lease)
        self.held = held  # the database's (None: not read)


class EpochFence:
    """The backend's fence, shared by its stores; inert until ``authority`` is set."""

    def __init__(self, *, holder: str) -> None:
        self.holder = holder  # this host's name, written with the epoch for operators
        self.authority: Authority | None = None
        self._advanced: int | None = None  # the epoch this process last advanced the row to
        self._ready = False  # the table exists (migrated once per process)

    def wanted(self, what: str) -> int | None:
        """The epoch a leader write must carry; None when nothing is fenced (one host).

        Raises EpochFenced when this process is in a cluster but may not act now."""
        authority = self.authority
        if authority is None:
            return None
        epoch = authority.epoch
        if epoch is not None:
            return epoch
        if authority.may_act():
            return None  # a single host: nothing to fence
        raise EpochFenced(
            f"not writing ({what}): this process does not hold the leader lease",
            mine=None,
            held=None,
        )

    def _judge(self, held: int | None, mine: int, what: str) -> None:
        if held == mine:
            return
        self._advanced = None  # advance (or find out) again on the next write
        if held is not None and held > mine:
            raise EpochFenced(
                f"not writing ({what}): the database is fenced at epoch {held}, newer than this "
                f"process's {mine} (another host leads now)",
                mine=mine,
                held=held,
            )
        # Moved back or deleted under us (an import, an operator): claimed again next write.
        raise StateError(f"not writing ({what}): the fencing epoch row holds {held}, not {mine}")

    # --- on the async pool (controller and incident stores) ------------------------------

    async def advance(self, conn: AsyncConn, epoch: int) -> int:
        """Move the row to ``epoch`` unless it holds a newer one, in a transaction of its own;
        the epoch it holds afterwards. Call outside a transaction."""
        if not self._ready:
            await migrate(conn, COMPONENT, STEPS)
            self._ready = True
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{ADVANCE_WAIT}'")
            await conn.execute(_ADVANCE, (epoch, self.holder))
            row = await (await conn.execute(_READ)).fetchone()
        held = None if row is None else int(row[0])
        if held == epoch:
            self._advanced = epoch
        return held if held is not None else 0

    @contextlib.asynccontextmanager
    async def transaction(self, conn: AsyncConn, what: str, *, leader: bool) -> AsyncIterator[None]:
        """``conn.transaction()``; for a ``leader`` write, fenced by the epoch row first."""
        epoch = self.wanted(what) if leader else None
        if epoch is not None and self._advanced != epoch:
            await self.advance(conn, epoch)
        async with conn.transaction():
            if epoch is not None:
                row = await (await conn.execute(_HOLD, (IDLE_LIMIT,))).fetchone()
                self._judge(None if row is None else int(row[0]), epoch, what)
            yield

    # --- on a synchronous connection (the ledger's worker thread) ------------------------

    def hold_sync(self, conn: SyncConn, what: str) -> None:
        """Inside the caller's transaction: advance when needed, then hold the row FOR SHARE
        and refuse unless it holds this process's epoch."""
        epoch = self.wanted(what)
        if epoch is None:
            return
        if self._advanced != epoch:
            # In the caller's transaction (the table is migrated when the store opens): the
            # row stays locked until it commits, once an epoch.
            conn.execute(f"SET LOCAL lock_timeout = '{ADVANCE_WAIT}'")
            conn.execute(_ADVANCE, (epoch, self.holder))
            conn.execute("SET LOCAL lock_timeout TO DEFAULT")
        row = conn.execute(_HOLD, (IDLE_LIMIT,)).fetchone()
        held = None if row is None else int(row[0])
        self._judge(held, epoch, what)
        self._advanced = epoch
