"""The DNS fence against a real BIND: a deposed leader's update is refused by BIND itself."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import dns.message
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import pytest

from failover.lb import LoadBalancerFenced, LoadBalancerRejected
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from nodevigil.core.authority import Fenced, Sole
from tests.failover.daemons import BindInstance, dns_query
from tests.failover.test_rfc2136_lb import adapter, published


@dataclass
class Lease:
    """An Authority whose epoch the test sets."""

    epoch: int | None
    acting: bool = True

    def may_act(self) -> bool:
        return self.acting

    def remaining(self) -> float:
        return math.inf if self.acting else 0.0


async def fence_of(bind: BindInstance) -> set[str]:
    """The fence record as a resolver reads it."""
    answer = await dns_query(f"_nodevigil-fence.{bind.zone}", "TXT", bind.port)
    rrset = answer.get_rrset(
        answer.answer, answer.question[0].name, dns.rdataclass.IN, dns.rdatatype.TXT
    )
    return set() if rrset is None else {rdata.to_text() for rdata in rrset}


class Spy:
    """Records every message the adapter sends."""

    def __init__(self, lb: Rfc2136LoadBalancer) -> None:
        self.sent: list[dns.message.Message] = []
        send = lb._send

        async def spy(message: dns.message.Message, *, tcp: bool) -> dns.message.Message:
            self.sent.append(message)
            return await send(message, tcp=tcp)

        lb._send = spy  # type: ignore[method-assign]


async def test_a_stale_leader_is_refused_by_bind(
    bind_server: BindInstance, caplog: pytest.LogCaptureFixture
) -> None:
    old = adapter(bind_server, authority=Lease(7))
    await old.set_addresses("www", {"192.0.2.7"})  # moves the fence to 7, then updates
    assert await fence_of(bind_server) == {'"7"'}
    assert await published(bind_server, "A") == {"192.0.2.7"}

    new = adapter(bind_server, authority=Lease(9))
    assert await new.addresses("www") == {"192.0.2.7"}  # its first read-back moves the fence
    assert await fence_of(bind_server) == {'"9"'}

    caplog.set_level(logging.WARNING, logger="failover.lb.rfc2136")
    with pytest.raises(LoadBalancerFenced) as refused:
        await old.set_addresses("www", {"192.0.2.66"})
    assert refused.value.code == "NXRRSET"  # BIND's own refusal of the prerequisite
    assert isinstance(refused.value, Fenced)
    assert refused.value.epoch == 7
    assert "holds epoch 9" in str(refused.value)
    # Not retried blindly: the next try reads the fence and sends no update at all.
    spy = Spy(old)
    with pytest.raises(LoadBalancerFenced, match="holds epoch 9"):
        await old.set_addresses("www", {"192.0.2.66"})
    assert [m.opcode() for m in spy.sent] == [dns.opcode.QUERY]
    assert await published(bind_server, "A") == {"192.0.2.7"}  # unchanged
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1  # logged once

    # The old leader cannot move the fence back either.
    with pytest.raises(LoadBalancerFenced):
        await old.advance_fence()
    assert await fence_of(bind_server) == {'"9"'}

    await new.set_addresses("www", {"192.0.2.9"})
    assert await published(bind_server, "A") == {"192.0.2.9"}


async def test_the_fence_moves_forward_over_a_value_it_did_not_write(
    bind_server: BindInstance,
) -> None:
    await adapter(bind_server, authority=Lease(3)).advance_fence()
    twelve = adapter(bind_server, authority=Lease(12))
    assert await twelve.advance_fence() == 12
    assert await twelve.fence_epoch() == 12
    assert await twelve.advance_fence() == 12  # nothing to do
    assert await fence_of(bind_server) == {'"12"'}


async def test_a_host_without_the_lease_sends_nothing(bind_server: BindInstance) -> None:
    standby = adapter(bind_server, authority=Lease(None, acting=False))
    spy = Spy(standby)
    with pytest.raises(LoadBalancerFenced, match="does not hold the leader lease"):
        await standby.set_addresses("www", {"192.0.2.1"})
    assert spy.sent == []
    assert await standby.addresses("www") == set()  # a standby still reads back


async def test_a_single_host_sends_what_it_sent_before(bind_server: BindInstance) -> None:
    await adapter(bind_server, authority=Lease(9)).advance_fence()
    for lb in (adapter(bind_server), adapter(bind_server, authority=Sole())):
        spy = Spy(lb)
        await lb.set_addresses("www", {"192.0.2.1"})
        assert [len(m.prerequisite) for m in spy.sent] == [0]  # type: ignore[attr-defined]
        assert len(spy.sent) == 1  # no read of the fence, no move
        assert await published(bind_server, "A") == {"192.0.2.1"}
    assert await fence_of(bind_server) == {'"9"'}


async def test_a_fence_that_is_not_an_epoch_is_reported(bind_server: BindInstance) -> None:
    lb = adapter(bind_server)
    update = lb._update()
    update.replace(lb.fence_name, 0, dns.rdatatype.TXT, '"hello"')
    await lb._send(update, tcp=True)
    with pytest.raises(LoadBalancerRejected, match="not an epoch") as caught:
        await adapter(bind_server, authority=Lease(5)).set_addresses("www", {"192.0.2.1"})
    assert not isinstance(caught.value, Fenced)
    assert await published(bind_server, "A") == set()
