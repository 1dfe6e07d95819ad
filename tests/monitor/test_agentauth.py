"""Agent keys, signatures and message order, and the board's use of them (no broker)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from monitor.agentauth import (
    Position,
    Stamp,
    derive_key,
    format_key,
    parse_key,
    read_stamp,
    sign,
    verify,
)
from monitor.heartbeat import HeartbeatBoard
from nodevigil.core.errors import ConfigError
from tests.leakcheck import register

SECRET = "s" * 40
NOW = 1_800_000_000.0
register("test agent secret", SECRET)


class FakeClock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.wall_time = NOW

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    async def sleep(self, seconds: float) -> None:
        self.mono += seconds


def stamp(boot: str = "aaaa0001", conn: int = 1, seq: int = 1, at: float = NOW) -> Stamp:
    return Stamp("n1", boot, conn, seq, at)


def test_keys_are_per_node_and_round_trip() -> None:
    k1, k2 = derive_key(SECRET, "n1"), derive_key(SECRET, "n2")
    assert k1 != k2 and len(k1) == 32
    assert parse_key(format_key(k1) + "\n") == k1
    with pytest.raises(ValueError, match="hex key"):
        parse_key("not a key")
    with pytest.raises(ValueError, match="32-byte"):
        parse_key("abcd")


def test_a_signature_covers_every_field_and_the_kind() -> None:
    key = derive_key(SECRET, "n1")
    body = {"node": "n1", "boot": "aaaa0001", "conn": 1, "seq": 3, "sent_at": NOW, "load1": 0.5}
    message = json.loads(sign(key, "heartbeat", body))
    assert verify(key, "heartbeat", message)
    assert not verify(key, "status", message)  # a heartbeat replayed on the status topic
    assert not verify(derive_key(SECRET, "n2"), "heartbeat", message)
    assert not verify(key, "heartbeat", {**message, "load1": 99.0})
    assert not verify(key, "heartbeat", {**message, "mac": 5})
    assert not verify(key, "heartbeat", {k: v for k, v in message.items() if k != "mac"})


@pytest.mark.parametrize(
    "fields",
    [
        {"boot": "XYZ"},
        {"boot": "ab"},
        {"conn": -1},
        {"seq": True},
        {"seq": 2**60},
        {"sent_at": float("inf")},
        {"sent_at": "now"},
        {"node": 7},
    ],
)
def test_stamps_out_of_bounds_are_refused(fields: dict[str, Any]) -> None:
    good = {"node": "n1", "boot": "aaaa0001", "conn": 1, "seq": 1, "sent_at": NOW}
    assert read_stamp(good) == stamp()
    assert read_stamp({**good, **fields}) is None


def test_order_within_a_boot_and_across_boots() -> None:
    p = Position()
    assert p.problem(stamp(at=NOW - 1000), NOW, 120, will=False) == "clock_skew"
    p.accept(stamp(seq=5), will=False)
    assert p.problem(stamp(seq=5), NOW, 120, will=False) == "replayed"
    assert p.problem(stamp(seq=4), NOW, 120, will=False) == "replayed"
    assert p.problem(stamp(seq=6), NOW, 120, will=False) == ""
    # A new boot must be later than the last accepted message, and near our clock.
    assert p.problem(stamp("bbbb0002", at=NOW - 1), NOW, 120, will=False) == "replayed"
    assert p.problem(stamp("bbbb0002", at=NOW + 1), NOW, 120, will=False) == ""
    assert p.problem(stamp("bbbb0002", at=NOW + 500), NOW, 120, will=False) == "clock_skew"


def test_a_will_counts_for_its_connection_once_and_closes_it() -> None:
    p = Position()
    assert p.problem(stamp(conn=2, seq=3), NOW, 120, will=True) == "unknown_connection"
    p.accept(stamp(conn=2, seq=10), will=False)
    assert p.problem(stamp(conn=1, seq=1), NOW, 120, will=True) == "replayed"  # an old link's
    assert p.problem(stamp(conn=2, seq=3), NOW, 120, will=True) == ""
    p.accept(stamp(conn=2, seq=3), will=True)
    assert p.problem(stamp(conn=2, seq=3), NOW, 120, will=True) == "replayed"  # once only
    assert p.problem(stamp(conn=2, seq=11), NOW, 120, will=False) == "replayed"  # closed
    assert p.problem(stamp(conn=3, seq=12), NOW, 120, will=False) == ""


class Board:
    """A board with a secret, its scheduled will confirmations run by hand."""

    def __init__(self) -> None:
        self.later: list[Any] = []
        self.clock = FakeClock()
        self.board = HeartbeatBoard(
            self.clock,
            schedule=lambda _delay, fn: self.later.append(fn),
            agents=["n1"],
            agent_secret=SECRET,
        )
        self.key = derive_key(SECRET, "n1")
        self.offline: list[str] = []
        self.board.on_offline = self.offline.append
        self.board.link_up()

    def send(self, kind: str, payload: bytes, *, retained: bool = False) -> None:
        self.board.handle(f"nodevigil/nodes/n1/{kind}", payload, "nodevigil", retained=retained)

    def signed(self, kind: str, s: Stamp, **extra: Any) -> bytes:
        body = {"node": s.node, "boot": s.boot, "conn": s.conn, "seq": s.seq, "sent_at": s.sent_at}
        return sign(self.key, kind, {**body, **extra})

    def run_later(self) -> None:
        later, self.later = self.later, []
        for fn in later:
            fn()


def test_a_forged_or_replayed_online_does_not_cancel_a_genuine_will() -> None:
    t = Board()
    t.send("heartbeat", t.signed("heartbeat", stamp(conn=1, seq=2), load1=0.1))
    online = t.signed("status", stamp(conn=1, seq=1), status="online")
    t.send("status", t.signed("status", stamp(conn=1, seq=0), status="offline"))  # the will
    t.send("status", b"online")  # forged
    t.send("status", online)  # replayed (recorded earlier)
    t.run_later()
    assert t.offline == ["n1"] and t.board.agents["n1"].offline
    assert t.board.dropped == {"unsigned": 1, "replayed": 1}


def test_the_agent_back_on_a_new_connection_cancels_its_will() -> None:
    t = Board()
    t.send("heartbeat", t.signed("heartbeat", stamp(conn=1, seq=2), load1=0.1))
    t.send("status", t.signed("status", stamp(conn=1, seq=0), status="offline"))
    t.send("status", t.signed("status", stamp(conn=2, seq=4), status="online"))
    t.run_later()
    assert t.offline == [] and not t.board.agents["n1"].offline


def test_retained_and_unknown_messages_move_nothing() -> None:
    t = Board()
    t.send("status", t.signed("status", stamp(), status="offline"), retained=True)
    t.board.handle("nodevigil/nodes/ghost/status", b"offline", "nodevigil")
    t.run_later()
    assert t.offline == [] and set(t.board.agents) == {"n1"}
    assert t.board.dropped == {"unknown_agent": 1}


def test_refusals_are_logged_once_per_agent_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "monitor.heartbeat")
    t = Board()
    bad = sign(derive_key(SECRET, "n2"), "heartbeat", {"node": "n1", "boot": "aaaa0001"})
    for _ in range(100):
        t.send("heartbeat", bad)
        t.send("heartbeat", b'{"load1": 1}')
    assert t.board.dropped == {"bad_mac": 100, "unsigned": 100}
    assert len(caplog.records) == 2
    t.clock.mono += 601  # still going ten minutes later: said once more
    t.send("heartbeat", bad)
    assert len(caplog.records) == 3


def test_a_weak_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="shorter than 32"):
        HeartbeatBoard(FakeClock(), agent_secret="short")


def test_forgetting_an_agent_drops_its_state() -> None:
    t = Board()
    t.send("heartbeat", t.signed("heartbeat", stamp(seq=2), load1=0.1))
    assert t.board.agents["n1"].last_seen is not None
    t.board.expect(["n2"])
    assert set(t.board.agents) == {"n2"}
    t.send("heartbeat", t.signed("heartbeat", stamp(seq=3), load1=0.1))
    assert t.board.dropped == {"unknown_agent": 1}
