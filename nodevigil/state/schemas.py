"""What ``nodevigil db migrate`` and ``nodevigil db status`` report, whatever the backend.

Each store (component) versions its schema on its own: SQLite by the file's ``user_version``,
PostgreSQL by its row in ``nodevigil_schema``. The versions are numbers of migration steps, so
a version above what this nodevigil knows means a newer nodevigil wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPONENTS = ("events", "controller", "incidents", "ledger")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One component's schema as found: ``version`` None when it was never created."""

    component: str
    where: str  # the SQLite file, or the PostgreSQL database
    version: int | None
    known: int  # the version this nodevigil's migrations bring it to

    @property
    def state(self) -> str:
        """``current``, ``absent``, ``older`` (``db migrate`` brings it up) or ``newer``."""
        if self.version is None:
            return "absent"
        if self.version == self.known:
            return "current"
        return "older" if self.version < self.known else "newer"


@dataclass(frozen=True, slots=True)
class Migrated:
    """What ``migrate`` did to one component: from version ``before`` (0: new) to ``after``."""

    component: str
    where: str
    before: int
    after: int
