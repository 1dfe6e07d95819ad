"""The replay's time window: ``--from`` and ``--to`` (or the API's ``from``/``to``).

A time is an RFC 3339 time with its offset (``2026-12-05T13:09:00Z``), seconds since the
epoch, ``now``, or an age before now (``-24h``, ``-90m``; ``24h`` means the same).
"""

from __future__ import annotations

import re
from datetime import datetime

from nodevigil.core.durations import parse_duration
from nodevigil.core.errors import NodevigilError

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_EPOCH = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
MAX_SPAN = 400 * 86400.0  # longer than any retention: a typo, not a request


class ReplayInputError(NodevigilError, ValueError):
    """A replay request cannot be run as given (the message says which value and why)."""


def parse_moment(text: str, *, now: float, name: str) -> float:
    """One time of the window as wall seconds; ReplayInputError naming ``name`` if bad."""
    raw = text.strip()
    if raw.lower() == "now":
        return now
    if _EPOCH.fullmatch(raw):
        return float(raw)
    if _RFC3339.fullmatch(raw):
        try:
            return datetime.fromisoformat(raw.upper().replace(" ", "T")).timestamp()
        except (ValueError, OverflowError):  # a 13th month; year 1 east of UTC
            raise ReplayInputError(f"{name}: {raw!r} is not a valid time") from None
    if _RFC3339.fullmatch(raw + "Z"):
        raise ReplayInputError(f"{name}: {raw!r} has no UTC offset (e.g. {raw}Z)")
    try:
        age = parse_duration(raw.removeprefix("-"))
    except ValueError:
        raise ReplayInputError(
            f"{name}: {raw[:64]!r} is neither an RFC 3339 time (2026-12-05T13:09:00Z), "
            "seconds since the epoch, 'now', nor an age such as -24h"
        ) from None
    return now - age


def window(since: str, until: str, *, now: float) -> tuple[float, float]:
    """``(from, to)`` in wall seconds, checked: from before to, to not in the future."""
    start = parse_moment(since, now=now, name="from")
    end = parse_moment(until, now=now, name="to")
    if end <= start:
        raise ReplayInputError(f"from must be before to (from {since!r}, to {until!r})")
    if end > now + 1.0:
        raise ReplayInputError(f"to: {until!r} is in the future; there is no history there")
    if end - start > MAX_SPAN:
        raise ReplayInputError(f"the window is longer than {MAX_SPAN / 86400:.0f} days")
    return start, end
