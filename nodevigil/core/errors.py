"""The root of the project's one exception tree; each domain adds its own branches.

Adapters convert library errors at their edge (``failover.lb.errors``, ``sla.errors``).
"""

from __future__ import annotations


class NodevigilError(Exception):
    """Root of every error nodevigil raises on purpose."""


class ConfigError(NodevigilError):
    """The configuration is invalid; ``problems`` lists every error as ``path: message``."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(problems))


class StateError(NodevigilError):
    """Durable state under ``state_dir`` cannot be used (locked, unwritable, corrupt)."""


class StartError(NodevigilError):
    """The daemon cannot start: something it must hold first (its API port) is taken."""


class AdapterError(NodevigilError):
    """A load balancer, notifier or store adapter failed; the message names the adapter."""
