"""bench/cluster_bench.py counts a notice resent under its webhook-id once, as receivers do.

A leader killed between the receiver's 200 and its own "delivered" mark leaves the notice to the
next leader, which sends it again under the same webhook-id (at least once, by design). The
benchmark used to count every accepted opening delivery, so such a resend read as a second
incident, and it summed duplicates over all earlier rounds in every round. The webhook-ids below
are the ones a real run produced (``inc<incident>.o<opening>.s<step>.<customer>.<notifier>``).
"""

from __future__ import annotations

from bench.cluster_bench import NoticeTally, tally_notices
from tests.notify.receivers import ReceivedWebhook


def accepted(webhook_id: str, kind: str) -> ReceivedWebhook:
    return ReceivedWebhook(webhook_id, kind, 0, b"{}", {}, {})


OPENED_1 = accepted("inc1.o1.s0.acme.acme-hook", "incident.opened")
RESOLVED_1 = accepted("inc1.o1.resolve.acme.acme-hook", "incident.resolved")
REOPENED_2 = accepted("inc1.o2.s0.acme.acme-hook", "incident.reopened")
RESOLVED_2 = accepted("inc1.o2.resolve.acme.acme-hook", "incident.resolved")


def test_an_opening_notice_resent_under_its_webhook_id_is_one_opening() -> None:
    round_ = [OPENED_1, OPENED_1, RESOLVED_1]  # the old leader died before marking it
    assert tally_notices([], round_) == NoticeTally(resent=1, opened=1)


def test_a_resend_in_an_earlier_round_is_not_counted_again() -> None:
    earlier = [OPENED_1, OPENED_1, RESOLVED_1]
    assert tally_notices(earlier, [REOPENED_2, RESOLVED_2]) == NoticeTally(resent=0, opened=1)


def test_a_second_opening_in_one_round_is_counted() -> None:
    # Two opening notices under different ids are two openings: what the benchmark must catch.
    third = accepted("inc2.o1.s0.acme.acme-hook", "incident.opened")
    round_ = [REOPENED_2, third, RESOLVED_2]
    assert tally_notices([OPENED_1, RESOLVED_1], round_) == NoticeTally(resent=0, opened=2)
