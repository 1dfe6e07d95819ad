"""The event log's port: where published events are kept, listed and pruned (clause IV.3).

The API lists events through it and the daemon feeds, watches and prunes it; backends live
in ``nodevigil.state`` (SQLite: ``nodevigil.state.sqlite.eventlog``).
"""

from __future__ import annotations

from typing import Any, Protocol

from nodevigil.core.events import Event


class EventLog(Protocol):
    """Durable events: appended from the bus, written in batches, kept until pruned."""

    @property
    def waiting(self) -> int:
        """Events published but not yet written."""
        ...

    @property
    def write_errors(self) -> int:
        """Failed batch writes so far."""
        ...

    @property
    def dropped(self) -> int:
        """Oldest waiting events given up while the store refused them."""
        ...

    async def open(self) -> None:
        """Prepare the store (create the schema)."""
        ...

    def append(self, event: Event) -> None:
        """Bus sink: queue the event for the next batch (never blocks)."""
        ...

    async def run(self) -> None:
        """Write batches until cancelled, then write what is left."""
        ...

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        subject: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events, newest first, filtered by time, kind prefix and subject."""
        ...

    async def prune(self, before: float) -> int:
        """Delete events older than ``before`` (wall time); return how many."""
        ...

    async def close(self) -> None:
        """Write what is left and release the store."""
        ...
