"""A read-back that fails because nodevigil is out of descriptors says nothing about the load
balancer: the adapters say so (LoadBalancerLocalError, not "unreachable"), and the controller's
cycle changes nothing for it (fail static), logged once however many cycles it lasts.

Against the real HAProxy and BIND, with this process really out of descriptors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from failover.lb import LoadBalancerLocalError, LoadBalancerUnavailable, ServerState
from tests.failover.controller_helpers import Rig
from tests.failover.daemons import BindInstance, HAProxyInstance
from tests.failover.test_haproxy_lb import adapter as haproxy_adapter
from tests.failover.test_rfc2136_lb import adapter as rfc2136_adapter
from tests.monitor.test_local_errors import out_of_descriptors


async def test_haproxy_read_back_out_of_descriptors_is_a_local_error(
    haproxy: HAProxyInstance,
) -> None:
    lb = haproxy_adapter(haproxy)
    assert set(await lb.servers("web")) == {"n1", "n2", "n3"}
    with out_of_descriptors(), pytest.raises(LoadBalancerLocalError) as caught:
        await lb.servers("web")
    assert not isinstance(caught.value, LoadBalancerUnavailable)  # not retried, not "down"
    assert caught.value.errno_name == "EMFILE"
    assert "nodevigil is out of file descriptors (EMFILE)" in str(caught.value)
    assert set(await lb.servers("web")) == {"n1", "n2", "n3"}


async def test_dns_read_back_out_of_descriptors_is_a_local_error(
    bind_server: BindInstance,
) -> None:
    lb = rfc2136_adapter(bind_server)
    await lb.set_addresses("www", {"192.0.2.10"})
    with out_of_descriptors(), pytest.raises(LoadBalancerLocalError):
        await lb.addresses("www")
    assert await lb.addresses("www") == {"192.0.2.10"}
    await lb.close()


async def test_the_controller_changes_nothing_while_nodevigil_cannot_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    await rig.cycle()
    local = LoadBalancerLocalError(
        "sh-lb: HAProxy at /x not reached: nodevigil is out of file descriptors (EMFILE)",
        errno_name="EMFILE",
    )
    rig.local["sh-lb"].fail_with(local)
    rig.given(sh_1="down")
    with caplog.at_level(logging.WARNING, logger="failover.controller.loop"):
        for _ in range(5):
            await rig.cycle(advance=1.0)
    assert rig.local["sh-lb"].calls_to("set_state") == []  # nothing written blind
    rig.local["sh-lb"].recover()
    assert rig.state("sh-1") is ServerState.READY
    lines = [r.getMessage() for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(lines) == 1, lines
    failed = rig.kinds("failover.failed")
    assert len(failed) == 1
    assert failed[0].failure == "local"  # said to be nodevigil's trouble, not the LB's
