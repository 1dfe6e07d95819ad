"""A vantage's vote as etcd holds it: the key ``votes/<node>/<vantage>`` and a JSON value.

Anything under ``votes/`` is written by processes that may run another version, or by an
operator with etcdctl, so reading is strict: a value that does not decode into a complete vote
for the node and vantage its key names is refused (``Refused.reason`` says which way) and the
store treats the key as holding no vote. Unknown fields are ignored, so a newer writer can add
some without older readers refusing its votes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from monitor.verdicts import Verdict

VOTES = "votes/"
VERDICTS = frozenset(verdict.value for verdict in Verdict)


@dataclass(frozen=True, slots=True)
class StoredVote:
    """What one vantage says of one node."""

    node: str
    vantage: str
    verdict: str  # "up" | "down" | "unknown"
    at: float  # wall time the vantage's verdict took this value (a label only)
    reason: str  # the vantage's evidence, e.g. "http: connection refused (3 of 3)"
    probe: str | None = None
    isolated: bool = False  # the vantage votes unknown because it looks cut off


class Refused(ValueError):
    """A key or value under ``votes/`` that is not a vote; ``reason`` labels the metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # "key", "json", "field" or "mismatch"


def check_name(what: str, name: str) -> None:
    """A node or vantage name must make one key segment: not empty, no ``/``."""
    if not name or "/" in name:
        raise ValueError(f"{what}: {name!r} must be non-empty and without '/'")


def vote_key(node: str, vantage: str) -> str:
    """``votes/<node>/<vantage>``, relative to the client's prefix."""
    return f"{VOTES}{node}/{vantage}"


def parse_key(key: str) -> tuple[str, str]:
    """``(node, vantage)`` of a key under ``votes/``; Refused("key") for any other shape."""
    parts = key.removeprefix(VOTES).split("/")
    if not key.startswith(VOTES) or len(parts) != 2 or not all(parts):
        raise Refused("key", f"{key!r} is not votes/<node>/<vantage>")
    return parts[0], parts[1]


def encode(vote: StoredVote) -> bytes:
    """The JSON value stored for ``vote``."""
    data = {
        "node": vote.node,
        "vantage": vote.vantage,
        "verdict": vote.verdict,
        "at": vote.at,
        "reason": vote.reason,
        "probe": vote.probe,
        "isolated": vote.isolated,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    # bool is an int to isinstance; a vote's numbers and strings are never booleans.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise Refused("field", f"{name}: {value!r} is not {getattr(kind, '__name__', kind)}")
    return value


def decode(node: str, vantage: str, value: bytes) -> StoredVote:
    """The vote stored under ``votes/<node>/<vantage>``; Refused when it is not one."""
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused("json", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused("json", f"not a JSON object but {type(data).__name__}")
    verdict = _field(data, "verdict", str)
    if verdict not in VERDICTS:
        raise Refused("field", f"verdict: {verdict!r} is not one of {sorted(VERDICTS)}")
    at = _field(data, "at", (int, float))
    if not math.isfinite(at):
        raise Refused("field", f"at: {at!r} is not a finite number")
    probe = data.get("probe")
    if probe is not None and not isinstance(probe, str):
        raise Refused("field", f"probe: {probe!r} is not a string")
    isolated = data.get("isolated", False)
    if not isinstance(isolated, bool):
        raise Refused("field", f"isolated: {isolated!r} is not a boolean")
    vote = StoredVote(
        node=_field(data, "node", str),
        vantage=_field(data, "vantage", str),
        verdict=verdict,
        at=float(at),
        reason=_field(data, "reason", str),
        probe=probe,
        isolated=isolated,
    )
    if (vote.node, vote.vantage) != (node, vantage):
        raise Refused("mismatch", f"the value is {vote.node}/{vote.vantage}'s vote")
    return vote
