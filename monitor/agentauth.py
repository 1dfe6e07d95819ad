"""Proof that an MQTT message comes from the node agent it names: per-node keys, MACs, order.

One installation secret (``mqtt.agent_secret``) derives every node's key:
``key(node) = HMAC-SHA256(secret, "nodevigil-agent:" + node)``. The daemon holds the secret;
each node holds only its own key (``nodevigil agent-key NODE``), so a node can sign for itself
and for no other. A message is a JSON object; its ``mac`` is
``HMAC-SHA256(key, "nodevigil/v1/<kind>\\n" + canonical JSON of the object without "mac")``,
canonical meaning sorted keys, no spaces, ASCII. The daemon verifies the canonical form of what
it parsed, so what it checks is exactly what it uses.

Every message carries a stamp: the agent's ``boot`` (random per start), ``conn`` (its broker
connection, counted from 1 in a boot), ``seq`` (counted across the boot) and ``sent_at`` (its
wall clock). ``order_problem`` says whether a stamp is newer than what was last accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodevigil.core.config.secrets import MIN_AGENT_SECRET
from nodevigil.core.config.secrets import secret_problem as config_secret_problem

KEY_CONTEXT = b"nodevigil-agent:"
MAC_CONTEXT = b"nodevigil/v1/"
KEY_BYTES = 32
BOOT = re.compile(r"[0-9a-f]{8,64}")
MAX_COUNT = 2**53  # JSON integers every reader keeps exact
# A will "closes" its connection: nothing later from that connection is accepted.
CLOSED = MAX_COUNT + 1


MIN_SECRET = MIN_AGENT_SECRET


def secret_problem(secret: str) -> str:
    """Why an installation secret is unfit (never quoting it), or "" (check-config's check)."""
    problem = config_secret_problem("agent", secret)
    return f"mqtt.agent_secret: {problem}" if problem else ""


def derive_key(secret: str, node: str) -> bytes:
    """The node's agent key, derived from the installation secret."""
    return hmac.new(secret.encode(), KEY_CONTEXT + node.encode(), hashlib.sha256).digest()


def format_key(key: bytes) -> str:
    """A key as written to the node's key file (hex)."""
    return key.hex()


def parse_key(text: str) -> bytes:
    """Read a key file's content; raise ValueError (never quoting it) when it is not a key."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("the key file does not hold a hex key") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"the key file does not hold a {KEY_BYTES}-byte key")
    return key


def canonical(body: Mapping[str, Any]) -> bytes:
    """The bytes a MAC covers; raise ValueError for values JSON cannot say (NaN)."""
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def mac(key: bytes, kind: str, body: Mapping[str, Any]) -> str:
    """The MAC of a message's body (without its ``mac``) on a topic of ``kind``."""
    data = MAC_CONTEXT + kind.encode() + b"\n" + canonical(body)
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def sign(key: bytes, kind: str, body: Mapping[str, Any]) -> bytes:
    """The payload of a signed message."""
    return canonical({**body, "mac": mac(key, kind, body)})


def verify(key: bytes, kind: str, message: Mapping[str, Any]) -> bool:
    """Whether the message's ``mac`` is right; constant-time."""
    claimed = message.get("mac")
    if not isinstance(claimed, str):
        return False
    body = {k: v for k, v in message.items() if k != "mac"}
    try:
        expected = mac(key, kind, body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, claimed)


@dataclass(frozen=True, slots=True)
class Stamp:
    """Who sent a message and where it stands in the agent's life."""

    node: str
    boot: str
    conn: int
    seq: int
    sent_at: float


def read_stamp(data: Mapping[str, Any]) -> Stamp | None:
    """The message's stamp, or None when a field is missing or out of bounds."""
    node, boot = data.get("node"), data.get("boot")
    conn, seq, sent_at = data.get("conn"), data.get("seq"), data.get("sent_at")
    if not isinstance(node, str) or not isinstance(boot, str) or not BOOT.fullmatch(boot):
        return None
    for count in (conn, seq):
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            return None
    if isinstance(sent_at, bool) or not isinstance(sent_at, int | float):
        return None
    if not math.isfinite(sent_at):
        return None
    assert isinstance(conn, int) and isinstance(seq, int)
    return Stamp(node, boot, conn, seq, float(sent_at))


@dataclass(slots=True)
class Position:
    """The newest accepted stamp of one agent: messages must come after it."""

    boot: str | None = None
    conn: int = 0
    seq: int = 0
    sent_at: float = -math.inf
    will: tuple[str, int] | None = None  # the connection whose will was taken (once only)

    def problem(self, stamp: Stamp, now_wall: float, max_skew: float, *, will: bool) -> str:
        """Why the stamp is not newer (a drop reason), or "" when it may be accepted.

        Within a boot, (conn, seq) must grow. A will needs only its connection to be the
        current one or a later one; it is taken once, and never before another message of
        the agent was (a will recorded earlier cannot greet a restarted daemon). A new boot
        is taken only when it was sent after the last accepted message and within
        ``max_skew`` of the daemon's clock, so a message from an earlier life cannot be
        played back.
        """
        if will and self.boot is None:
            return "unknown_connection"  # nothing taken yet to say which connection is current
        if will and self.will == (stamp.boot, stamp.conn):
            return "replayed"
        if stamp.boot == self.boot:
            if will:
                return "" if stamp.conn >= self.conn else "replayed"
            return "" if (stamp.conn, stamp.seq) > (self.conn, self.seq) else "replayed"
        if abs(stamp.sent_at - now_wall) > max_skew:
            return "clock_skew"
        if stamp.sent_at <= self.sent_at:
            return "replayed"
        return ""

    def accept(self, stamp: Stamp, *, will: bool) -> None:
        """Move past ``stamp``; a will closes its connection."""
        new_boot = stamp.boot != self.boot
        self.boot = stamp.boot
        if will:
            self.conn, self.seq = stamp.conn, CLOSED
            self.will = (stamp.boot, stamp.conn)
        else:
            self.conn, self.seq = stamp.conn, stamp.seq
        self.sent_at = stamp.sent_at if new_boot else max(self.sent_at, stamp.sent_at)
