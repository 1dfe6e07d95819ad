"""Query, path and body values parsed strictly: a bad value is a 400 that names it.

Every parser here accepts exactly what the OpenAPI document (``openapi.py``) promises, so
the document and the routes cannot disagree: ASCII digits only (``"²".isdigit()`` is true),
RFC 3339 times with an offset (or, in a query, seconds since the epoch), ``YYYY-MM-DD``
dates.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from nodevigil.app.api.errors import ApiError

MAX_ID = 2**63 - 1  # SQLite's INTEGER: a larger id cannot name anything
MAX_LIMIT = 1000
# The years a time may fall in: Unix time is defined from 1970; year 9999 is the last
# a datetime can hold in every time zone.
FIRST_YEAR, LAST_YEAR = 1970, 9998

_WHOLE = re.compile(r"[0-9]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EPOCH = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")  # seconds since 1970, ASCII digits
_LAST_SECOND = datetime(LAST_YEAR, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def whole_number(raw: str, key: str, *, low: int = 0, high: int = MAX_ID) -> int:
    """``raw`` as an integer from ``low`` to ``high``, else a 400 naming ``key``."""
    digits = raw.lstrip("0") or "0"
    # A number longer than 19 digits is out of range anyway; int() of a huge one is slow.
    if not _WHOLE.fullmatch(raw) or len(digits) > 19 or not low <= int(digits) <= high:
        raise ApiError(400, f"{key}: must be a whole number from {low} to {high}")
    return int(digits)


def path_id(request: web.Request, key: str = "id") -> int:
    """A numeric id from the path (an incident, interval or maintenance window)."""
    return whole_number(request.match_info[key], key)


def limit(request: web.Request, default: int = 100) -> int:
    """``?limit=``: how many rows, 1 to 1000."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    return whole_number(raw, "limit", low=1, high=MAX_LIMIT)


def query_time(request: web.Request, key: str) -> float | None:
    """An optional query time as wall seconds: an RFC 3339 time with its offset
    (``2026-12-05T13:09:00Z``) or seconds since the epoch (``1796476140.5``)."""
    moment = _query_moment(request, key)
    return moment.timestamp() if isinstance(moment, datetime) else moment


def query_date(request: web.Request, key: str) -> date | None:
    """An optional query date ``YYYY-MM-DD``."""
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        if not _DATE.fullmatch(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, f"{key}: {raw!r} is not a date (YYYY-MM-DD)") from None


def instant(raw: Any, key: str) -> datetime:
    """An RFC 3339 time with its offset: a 400 when malformed, 422 when out of range."""
    if not isinstance(raw, str):
        raise ApiError(400, f"{key}: give an RFC 3339 time with its offset")
    if not _RFC3339.fullmatch(raw):
        hint = " has no UTC offset" if _RFC3339.fullmatch(raw + "Z") else " is not an RFC 3339 time"
        raise ApiError(400, f"{key}: {raw[:64]!r}{hint}")
    try:
        value = datetime.fromisoformat(raw.upper())
    except ValueError:  # a 13th month, a 25th hour
        raise ApiError(400, f"{key}: {raw!r} is not an RFC 3339 time") from None
    try:
        in_range = FIRST_YEAR <= value.astimezone(UTC).year <= LAST_YEAR
    except OverflowError:  # year 1 east of UTC is year 0 in UTC
        in_range = False
    if not in_range:
        raise ApiError(422, f"{key}: must fall between {FIRST_YEAR} and {LAST_YEAR}")
    return value


def query_instant(request: web.Request, key: str) -> datetime | None:
    """An optional query time (RFC 3339, or seconds since the epoch: ``query_time``)."""
    moment = _query_moment(request, key)
    return datetime.fromtimestamp(moment, UTC) if isinstance(moment, float) else moment


def _query_moment(request: web.Request, key: str) -> datetime | float | None:
    """The query's time as given: an RFC 3339 time, seconds since the epoch, or absent."""
    raw = request.query.get(key)
    if raw is None:
        return None
    if _EPOCH.fullmatch(raw):
        seconds = float(raw)
        if seconds > _LAST_SECOND:
            raise ApiError(422, f"{key}: must fall between {FIRST_YEAR} and {LAST_YEAR}")
        return seconds
    if not _RFC3339.fullmatch(raw):
        what = (
            "has no UTC offset"
            if _RFC3339.fullmatch(raw + "Z")
            else "is neither an RFC 3339 time nor seconds since the epoch"
        )
        raise ApiError(400, f"{key}: {raw[:64]!r} {what} (e.g. 2026-12-05T13:09:00Z)")
    return instant(raw, key)


def check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    """A 400 naming the keys of ``body`` that are not in ``allowed``."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            400, f"unknown key(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def text(body: dict[str, Any], key: str, *, max_length: int, required: bool = False) -> str:
    """A string field of at most ``max_length`` characters (stripped); absent is ``""``."""
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > max_length:
        raise ApiError(400, f"{key}: must be a string of at most {max_length} characters")
    if required and not value:
        raise ApiError(400, f"{key}: is required")
    if required and not value.strip():
        raise ApiError(422, f"{key}: is blank")
    return value.strip()


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when optional and empty), else a 400.

    A key given twice at any depth is refused with a 400 naming it: parsers disagree on which
    one wins (Python keeps the last, others the first), so a duplicate is ambiguous.
    """
    raw = await request.read()
    if optional and not raw:
        return {}
    try:
        body = json.loads(
            raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys
        )
    except _DuplicateKey as exc:
        raise ApiError(400, f"the body gives the key {str(exc)[:64]!r} more than once") from None
    except (ValueError, RecursionError):  # RecursionError: nested a few thousand deep
        raise ApiError(400, "the body is not valid JSON (UTF-8)") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


class _DuplicateKey(Exception):
    """A JSON object gave one key twice (not a ValueError, so the caller can tell it apart)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity
