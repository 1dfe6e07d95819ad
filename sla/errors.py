"""Errors of the SLA package, rooted in the project's exception tree."""

from __future__ import annotations

from nodevigil.core.errors import NodevigilError


class SlaError(NodevigilError):
    """The ledger or the credit calculator refused an operation."""


class SlaInputError(SlaError, ValueError):
    """Bad input; the message names the file and line (``FILE:LINE: problem``) when known."""

    def __init__(self, problem: str, source: str = "", line: int | None = None) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {problem}" if where else problem)
