"""The proofs' waiting state machines, fed samples by hand (the real programs: test_proof_*)."""

from __future__ import annotations

from failover.lb.authoritative import NameServer, ServerAnswer, serial_at_least
from failover.lb.haproxy import ServerTraffic, parse_stat
from failover.proof.watch import Direction, DnsWatch, DrainWatch, Outcome, RestoreWatch

NS1 = NameServer("ns1.example.test.", "127.0.0.1")
NS2 = NameServer("ns2.example.test.", "10.0.0.2")
OLD, NEW = frozenset({"192.0.2.1", "192.0.2.2"}), frozenset({"192.0.2.1"})


def t(current: int, total: int) -> ServerTraffic:
    return ServerTraffic("n1", current, total)


def test_a_drain_is_proved_when_the_sessions_end_and_no_new_one_comes() -> None:
    watch = DrainWatch(subject="n1", started=100.0)
    assert watch.feed(100.1, t(3, 40)) is None  # three sessions still open
    assert watch.feed(100.6, t(1, 40)) is None
    assert watch.feed(101.4, t(0, 40)) is None  # empty: one more poll must see nothing new
    proof = watch.feed(101.9, t(0, 40))
    assert proof is not None and proof.outcome is Outcome.PROVED
    assert proof.direction is Direction.DRAIN
    assert proof.seconds is not None and abs(proof.seconds - 1.4) < 1e-9
    assert proof.sessions == 3
    assert proof.text == "traffic left n1 in 1.4 s (3 sessions drained)"


def test_a_session_arriving_between_polls_restarts_the_wait() -> None:
    watch = DrainWatch(subject="n1", started=0.0)
    assert watch.feed(0.5, t(0, 10)) is None
    assert watch.feed(1.0, t(0, 11)) is None  # a new session came and went: not yet
    proof = watch.feed(1.5, t(0, 11))
    assert proof is not None and proof.seconds == 1.0 and proof.sessions == 1


def test_a_drain_that_never_empties_times_out_saying_what_is_open() -> None:
    watch = DrainWatch(subject="n1", started=0.0)
    for at in (0.5, 1.0, 1.5):
        assert watch.feed(at, t(2, 7 + int(at * 2))) is None
    proof = watch.expire(60.0)
    assert proof.outcome is Outcome.TIMEOUT and proof.seconds is None
    assert (
        proof.text
        == "traffic did not leave n1 within 60.0 s: 2 sessions still open, 2 new since the drain"
    )


def test_a_drain_never_read_times_out_with_the_read_error() -> None:
    proof = DrainWatch(subject="n1", started=0.0).expire(5.0, "HAProxy did not answer")
    assert proof.outcome is Outcome.TIMEOUT
    assert "could not be read (HAProxy did not answer)" in proof.text


def test_a_restore_is_proved_by_a_new_session_or_ends_quiet() -> None:
    watch = RestoreWatch(subject="n1", started=10.0)
    assert watch.feed(10.1, t(0, 40)) is None  # the baseline
    assert watch.feed(10.6, t(0, 40)) is None
    proof = watch.feed(11.1, t(1, 42))
    assert proof is not None and proof.outcome is Outcome.PROVED and proof.sessions == 2
    assert proof.text == "n1 takes traffic again after 1.1 s (2 new sessions)"
    quiet = RestoreWatch(subject="n1", started=0.0)
    assert quiet.feed(0.1, t(0, 5)) is None
    assert quiet.expire(30.0).outcome is Outcome.NO_TRAFFIC  # a quiet site is not an alert


def answer(ns: NameServer, serial: int, addresses: frozenset[str]) -> ServerAnswer:
    return ServerAnswer(ns, serial, addresses, 30)


def test_a_dns_change_is_proved_when_every_server_has_the_new_serial_and_set() -> None:
    watch = DnsWatch(subject="web (www)", started=0.0, old=OLD, new=NEW, ttl=30)
    assert watch.direction is Direction.WITHDRAW
    # The primary has it; the secondary still serves the old zone.
    assert watch.feed(0.5, [answer(NS1, 8, NEW), answer(NS2, 7, OLD)]) is None
    # A secondary not answering at all is not a proof either.
    assert watch.feed(1.0, [answer(NS1, 8, NEW), ServerAnswer(NS2, error="timeout")]) is None
    late = watch.expire(1.2)
    assert "ns2.example.test. (10.0.0.2): timeout" in late.text
    proof = watch.feed(2.0, [answer(NS1, 8, NEW), answer(NS2, 8, NEW)])
    assert proof is not None and proof.outcome is Outcome.PROVED and proof.seconds == 2.0
    assert proof.ttl == 30
    assert proof.text == (
        "all 2 authoritative servers answer [192.0.2.1] for web (www) (serial 8) after 2.0 s; "
        "clients may hold the old answer up to 30 s more (its TTL)"
    )


def test_a_server_with_the_set_but_an_old_serial_still_lags() -> None:
    watch = DnsWatch(subject="www", started=0.0, old=OLD, new=NEW, ttl=30)
    assert watch.feed(0.5, [answer(NS1, 9, NEW), answer(NS2, 8, NEW)]) is None
    assert "ns2.example.test. (10.0.0.2) at serial 8 (newest 9)" in watch.expire(1.0).text


def test_serials_compare_across_the_wrap() -> None:
    assert serial_at_least(3, 2**32 - 5)
    assert not serial_at_least(2**32 - 5, 3)
    assert serial_at_least(7, 7) and not serial_at_least(6, 7)


def test_show_stat_is_parsed_by_its_header() -> None:
    text = (
        "# pxname,svname,qcur,scur,stot,status\n"
        "web,FRONTEND,,1,9,OPEN\n"
        "web,n1,0,2,5,MAINT\n"
        "web,n2,0,0,4,UP\n"
        "other,n1,0,7,70,UP\n"
        "web,BACKEND,0,2,9,UP\n"
    )
    assert parse_stat(text, "web") == {
        "n1": ServerTraffic("n1", 2, 5),
        "n2": ServerTraffic("n2", 0, 4),
    }
