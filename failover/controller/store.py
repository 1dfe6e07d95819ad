"""The controller's port for durable state: what it keeps, and the small Protocol to keep it.

Backends live in ``nodevigil.state`` (SQLite: ``nodevigil.state.sqlite.controller``).

The store holds overrides, hold-down bookkeeping, open whole-service outages and the action
log. Times in the store are wall-clock: monotonic time does not survive a reboot, so the
controller shifts its monotonic bookkeeping to wall time when saving and back when loading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from failover.controller.state import Book, Override, OverrideKind


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One applied (or failed) load-balancer action, as kept in the action log."""

    at: float  # wall-clock
    lb: str
    what: str  # "set_state" or "set_addresses"
    target: str  # backend/server or record
    old: str
    new: str
    why: str
    result: str  # "ok" or "error"
    error: str | None = None
    # Who acted: the process's vantage and the leader lease's fencing epoch it acted under
    # (None on a single host). Records written before these existed read back as "" / None.
    vantage: str = ""
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a store hands back at start (bookkeeping times are wall-clock here)."""

    overrides: Mapping[tuple[OverrideKind, str], Override] = field(default_factory=dict)
    book: Book = field(default_factory=Book)


class Store(Protocol):
    """Where the controller keeps what must survive a restart (SQLite now; etcd or SQL later)."""

    async def load(self) -> StoredState:
        """Everything saved so far."""
        ...

    async def put_override(self, override: Override) -> None:
        """Save or replace an override."""
        ...

    async def delete_override(self, kind: OverrideKind, name: str) -> None:
        """Forget an override (no error when absent)."""
        ...

    async def save_book(self, book: Book, records: Sequence[ActionRecord] = ()) -> None:
        """Replace the saved bookkeeping with ``book`` (wall-clock times) and append
        ``records`` to the action log, in one transaction (one disk sync, not two)."""
        ...

    async def record_actions(self, records: list[ActionRecord]) -> None:
        """Append to the action log."""
        ...

    async def actions(self, limit: int = 100) -> list[ActionRecord]:
        """The latest ``limit`` action records, newest last."""
        ...

    async def prune_actions(self, before: float) -> int:
        """Delete action records older than wall time ``before`` (retention); return the count."""
        ...

    async def close(self) -> None:
        """Release the backend."""
        ...
