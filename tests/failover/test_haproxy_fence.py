"""HAProxy cannot check an epoch: a change is sent only while the lease covers its timeout."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from failover.lb import LoadBalancerFenced, ServerState, build_local
from failover.lb.haproxy import HAProxyLoadBalancer
from nodevigil.core.authority import Fenced, Sole
from nodevigil.core.config.schema import HAProxyLB
from tests.failover.daemons import HAProxyInstance
from tests.failover.test_haproxy_lb import FAST


@dataclass
class Lease:
    """An Authority whose time left the test sets."""

    left: float
    epoch: int | None = 7

    def may_act(self) -> bool:
        return self.left > 0

    def remaining(self) -> float:
        return self.left


def adapter(instance: HAProxyInstance, authority: object) -> HAProxyLoadBalancer:
    return HAProxyLoadBalancer(
        name="sh-haproxy",
        socket_path=instance.socket_path,
        timeout=1.0,
        retry=FAST,
        authority=authority,  # type: ignore[arg-type]
    )


async def test_a_command_the_lease_does_not_cover_is_not_sent(haproxy: HAProxyInstance) -> None:
    lease = Lease(left=0.4)  # less than the 1 s timeout
    lb = adapter(haproxy, lease)
    with pytest.raises(LoadBalancerFenced, match=r"0\.40s left") as refused:
        await lb.set_state("web", "n1", ServerState.MAINT)
    assert isinstance(refused.value, Fenced)
    assert refused.value.epoch == 7
    lease.left = 0.0  # past the deadline: not the leader
    with pytest.raises(LoadBalancerFenced, match="does not hold the leader lease"):
        await lb.set_state("web", "n1", ServerState.MAINT)
    # HAProxy's admin state is unchanged, and reading is never fenced.
    assert (await lb.servers("web"))["n1"].admin is ServerState.READY

    lease.left = 3.0
    await lb.set_state("web", "n1", ServerState.DRAIN)
    assert (await lb.servers("web"))["n1"].admin is ServerState.DRAIN


async def test_a_single_host_is_not_limited(haproxy: HAProxyInstance) -> None:
    cfg = HAProxyLB.model_validate(
        {"type": "haproxy", "socket": str(haproxy.socket_path), "backend": "web"}
    )
    lb = build_local("sh-haproxy", cfg, authority=Sole())
    assert math.isinf(Sole().remaining())
    await lb.set_state("web", "n2", ServerState.MAINT)
    assert (await lb.servers("web"))["n2"].admin is ServerState.MAINT
