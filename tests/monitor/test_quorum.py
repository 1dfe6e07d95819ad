"""The combining rule of several vantages' votes (monitor/quorum.py): pure logic."""

from __future__ import annotations

import pytest

from monitor.quorum import Vote, VoteBook, majority
from monitor.verdicts import Verdict

UP, DOWN, UNKNOWN = Verdict.UP, Verdict.DOWN, Verdict.UNKNOWN
THREE = ("ops-1", "ops-2", "ops-3")


def vote(vantage: str, verdict: Verdict, reason: str = "") -> Vote:
    return Vote(vantage=vantage, verdict=verdict, at=1000.0, reason=reason or verdict.value)


def book(*votes: tuple[str, Verdict], quorum: int | None = None) -> VoteBook:
    b = VoteBook(THREE, quorum)
    for vantage, verdict in votes:
        b.cast("n1", vote(vantage, verdict))
    return b


def test_the_default_quorum_is_a_majority_of_the_configured_vantages() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert VoteBook(THREE).quorum == 2
    assert VoteBook(THREE, 3).quorum == 3


def test_one_vantage_seeing_a_node_die_is_not_enough() -> None:
    b = book(("ops-1", UP), ("ops-2", UP), ("ops-3", UP))
    assert b.verdict("n1") is UP
    assert b.cast("n1", vote("ops-1", DOWN)) is None
    assert b.verdict("n1") is UP


def test_a_quorum_of_down_votes_calls_the_node_down_and_names_the_votes() -> None:
    b = book(("ops-1", UP), ("ops-2", UP), ("ops-3", UP))
    b.cast("n1", vote("ops-1", DOWN, "http: connection refused"))
    changed = b.cast("n1", vote("ops-2", DOWN, "tcp: timed out"))
    assert changed is not None
    assert changed.verdict is DOWN and changed.previous is UP and not changed.held
    assert [v.vantage for v in changed.deciding()] == ["ops-1", "ops-2"]
    assert "ops-1: down (http: connection refused)" in changed.reason
    assert "ops-2: down (tcp: timed out)" in changed.reason
    assert "ops-3: up" in changed.reason
    # One of them sees it again: no longer a quorum of down votes.
    back = b.cast("n1", vote("ops-1", UP))
    assert back is not None and back.verdict is UP and back.previous is DOWN


def test_too_few_live_votes_keep_the_last_verdict_never_drain() -> None:
    b = book(("ops-1", UP), ("ops-2", UP), ("ops-3", UP))
    # Two vantages die (their votes vanish) and the last one sees the node die.
    assert b.withdraw("n1", "ops-2") is None
    assert b.withdraw("n1", "ops-3") is None
    assert b.cast("n1", vote("ops-1", DOWN)) is None
    combined = b.combined("n1")
    assert combined is not None and combined.verdict is UP and combined.held
    assert "1 of 2 votes needed" in combined.reason


def test_unknown_votes_do_not_count_as_live() -> None:
    b = book(("ops-1", UP), ("ops-2", UP), ("ops-3", UP))
    b.cast("n1", vote("ops-3", UNKNOWN))  # cut off: votes unknown for everything
    assert b.verdict("n1") is UP
    b.cast("n1", vote("ops-1", DOWN))
    assert b.verdict("n1") is UP
    changed = b.cast("n1", vote("ops-2", DOWN))  # the two that see agree: a real death
    assert changed is not None and changed.verdict is DOWN


def test_a_node_nobody_has_judged_stays_unknown_and_publishes_nothing() -> None:
    b = VoteBook(THREE)
    assert b.cast("n1", vote("ops-1", UP)) is None
    assert b.verdict("n1") is UNKNOWN
    first = b.cast("n1", vote("ops-2", UP))
    assert first is not None and first.verdict is UP and first.previous is UNKNOWN


def test_votes_of_vantages_not_configured_are_ignored() -> None:
    b = book(("ops-1", UP), ("ops-2", UP))
    b.cast("n1", vote("intruder", DOWN))
    b.cast("n1", vote("ops-1", DOWN))
    assert b.verdict("n1") is UP
    assert "intruder" in b.votes("n1")  # kept for the API, never counted
    assert "intruder" not in b.tally()


def test_quorum_one_lets_a_single_vantage_decide() -> None:
    b = book(("ops-1", UP), quorum=1)
    changed = b.cast("n1", vote("ops-1", DOWN))
    assert changed is not None and changed.verdict is DOWN


def test_reconfiguring_the_quorum_recombines_every_node() -> None:
    b = book(("ops-1", UP), ("ops-2", UP), ("ops-3", UP), quorum=3)
    b.cast("n1", vote("ops-1", DOWN))
    b.cast("n1", vote("ops-2", DOWN))
    assert b.verdict("n1") is UP  # 2 of the 3 needed
    changed = b.reconfigure(THREE, 2)
    assert [(c.node, c.verdict) for c in changed] == [("n1", DOWN)]


@pytest.mark.parametrize(
    ("vantages", "quorum", "message"),
    [
        ((), None, "vantages"),
        (("a", "a"), None, "vantages"),
        (THREE, 4, "quorum"),
        (THREE, 0, "quorum"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(
    vantages: tuple[str, ...], quorum: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VoteBook(vantages, quorum)


def test_others_and_tally_show_what_each_vantage_sees() -> None:
    b = book(("ops-1", DOWN), ("ops-2", UP), ("ops-3", UNKNOWN))
    assert b.others("ops-1") == {"n1": {"ops-2": UP}}
    assert b.tally()["ops-1"] == {"unknown": 0, "up": 0, "down": 1}
    b.forget("n1")
    assert b.verdicts() == {} and b.others("ops-1") == {}
