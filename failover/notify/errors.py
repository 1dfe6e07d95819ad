"""Notifier errors, rooted in the project's adapter errors."""

from __future__ import annotations

from nodevigil.core.errors import AdapterError


class NotifierError(AdapterError):
    """A notifier could not deliver."""
