"""Recording adapters, the retry helper and the registry, without real programs."""

from __future__ import annotations

import pytest

from failover.lb import (
    GlobalLoadBalancer,
    LoadBalancerInvalid,
    LoadBalancerNotFound,
    LoadBalancerRejected,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
    LocalLoadBalancer,
    OperationalState,
    RetryPolicy,
    ServerState,
    build_global,
    build_local,
    call_with_retries,
)
from failover.lb.errors import LoadBalancerError
from failover.lb.recording import RecordingGlobalLoadBalancer, RecordingLocalLoadBalancer
from nodevigil.core.config.schema import HAProxyLB, RecordingLB, Rfc2136LB
from nodevigil.core.errors import ConfigError


class Ticks:
    """A fake clock for recorded timestamps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


async def test_recording_local_keeps_state_and_records_calls() -> None:
    lb = RecordingLocalLoadBalancer("sh", clock=Ticks())
    assert isinstance(lb, LocalLoadBalancer)
    lb.add_server("web", "n1")
    lb.add_server("web", "n2")
    await lb.set_state("web", "n1", ServerState.MAINT)
    servers = await lb.servers("web")
    assert servers["n1"].admin is ServerState.MAINT
    assert servers["n1"].operational is OperationalState.DOWN
    assert servers["n2"].serving
    assert [(c.at, c.method, c.args) for c in lb.calls] == [
        (101.0, "set_state", ("web", "n1", ServerState.MAINT)),
        (102.0, "servers", ("web",)),
    ]
    with pytest.raises(LoadBalancerNotFound):
        await lb.set_state("web", "n9", ServerState.READY)
    with pytest.raises(LoadBalancerNotFound):
        await lb.servers("api")


async def test_recording_local_failure_switch() -> None:
    lb = RecordingLocalLoadBalancer("sh")
    lb.add_server("web", "n1")
    lb.fail_with()
    with pytest.raises(LoadBalancerUnavailable):
        await lb.set_state("web", "n1", ServerState.MAINT)
    assert lb.calls_to("set_state")[0].error is not None
    lb.recover()
    assert (await lb.servers("web"))["n1"].admin is ServerState.READY
    lb.fail_with(LoadBalancerRejected("sh: no", code="cli"))
    with pytest.raises(LoadBalancerRejected):
        await lb.servers("web")


async def test_recording_global_replaces_and_fails_on_demand() -> None:
    lb = RecordingGlobalLoadBalancer("gslb")
    assert isinstance(lb, GlobalLoadBalancer)
    await lb.set_addresses("www", {"192.0.2.1", "2001:db8::1"})
    await lb.set_addresses("www", {"192.0.2.2"})
    assert await lb.addresses("www") == {"192.0.2.2"}
    with pytest.raises(LoadBalancerInvalid):
        await lb.set_addresses("www", {"not-an-ip"})
    await lb.set_addresses("www", set())
    assert await lb.addresses("www") == set()
    lb.fail_with()
    with pytest.raises(LoadBalancerError):
        await lb.addresses("www")
    assert [c.method for c in lb.calls][-1] == "addresses"


async def test_retries_only_transient_errors_and_reraises_the_last() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise LoadBalancerTimeout("lb: slow")
        return "ok"

    policy = RetryPolicy(attempts=4, total=10.0, initial=0.1, maximum=1.0)
    assert await call_with_retries(flaky, policy, sleep=sleep) == "ok"
    assert attempts == 3
    assert len(slept) == 2
    assert all(0 <= s <= 1.0 for s in slept)

    attempts = 0

    async def missing() -> str:
        nonlocal attempts
        attempts += 1
        raise LoadBalancerNotFound("lb: no such server")

    with pytest.raises(LoadBalancerNotFound):
        await call_with_retries(missing, policy, sleep=sleep)
    assert attempts == 1

    async def down() -> str:
        raise LoadBalancerUnavailable(f"lb: refused {len(slept)}")

    slept.clear()
    with pytest.raises(LoadBalancerUnavailable, match="refused 3"):
        await call_with_retries(down, policy, sleep=sleep)
    assert len(slept) == 3


def test_retry_policy_is_checked_at_once() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="maximum"):
        RetryPolicy(initial=2.0, maximum=1.0)


def test_registry_maps_types_and_refuses_the_wrong_kind() -> None:
    recording = RecordingLB(type="recording")
    assert isinstance(build_local("demo", recording), RecordingLocalLoadBalancer)
    assert isinstance(build_global("demo", recording), RecordingGlobalLoadBalancer)
    haproxy = HAProxyLB(type="haproxy", socket="/run/haproxy/admin.sock", backend="web")
    with pytest.raises(ConfigError, match="not a global load balancer"):
        build_global("sh", haproxy)
    dns = Rfc2136LB(type="rfc2136", server="127.0.0.1:53", zone="example.test")
    with pytest.raises(ConfigError, match="not a local load balancer"):
        build_local("gslb", dns)
    with pytest.raises(ConfigError, match="give socket or address"):
        build_local("sh", HAProxyLB(type="haproxy", backend="web"))


def test_errors_are_project_errors_and_builtins() -> None:
    assert issubclass(LoadBalancerTimeout, TimeoutError)
    assert issubclass(LoadBalancerTimeout, LoadBalancerUnavailable)
    assert issubclass(LoadBalancerUnavailable, ConnectionError)
    assert issubclass(LoadBalancerNotFound, LookupError)
    assert issubclass(LoadBalancerInvalid, ValueError)
    for cls in (LoadBalancerTimeout, LoadBalancerNotFound, LoadBalancerRejected):
        assert issubclass(cls, LoadBalancerError)
