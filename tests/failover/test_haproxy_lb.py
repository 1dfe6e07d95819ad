"""The HAProxy adapter against a real HAProxy: read-back, maint/drain/ready, errors."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from failover.lb import (
    LoadBalancerInvalid,
    LoadBalancerNotFound,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
    LocalLoadBalancer,
    OperationalState,
    RetryPolicy,
    ServerState,
    build_local,
)
from failover.lb.errors import LoadBalancerError
from failover.lb.haproxy import HAProxyLoadBalancer, parse_servers_state
from nodevigil.core.config.schema import HAProxyLB
from tests.failover.daemons import HAProxyInstance

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)


def adapter(instance: HAProxyInstance, **kwargs: object) -> HAProxyLoadBalancer:
    return HAProxyLoadBalancer(
        name="sh-haproxy",
        socket_path=instance.socket_path,
        retry=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


async def answers_through_frontend(instance: HAProxyInstance, count: int) -> Counter[str]:
    """Send ``count`` real requests through the frontend; count who answered."""
    seen: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(count):
            async with http.get(instance.url) as response:
                seen[await response.text() if response.status == 200 else str(response.status)] += 1
    return seen


async def test_reads_back_every_server_with_address_and_state(haproxy: HAProxyInstance) -> None:
    lb = adapter(haproxy)
    assert isinstance(lb, LocalLoadBalancer)
    servers = await lb.servers("web")
    assert set(servers) == {"n1", "n2", "n3"}
    for name, status in servers.items():
        assert status.admin is ServerState.READY
        assert status.operational is OperationalState.UP
        assert status.address == "127.0.0.1"
        assert status.port == haproxy.nodes[name].port
        assert status.serving


async def test_maint_keeps_real_requests_away_and_ready_brings_them_back(
    haproxy: HAProxyInstance,
) -> None:
    lb = adapter(haproxy)
    assert set(await answers_through_frontend(haproxy, 6)) == {"n1", "n2", "n3"}

    await lb.set_state("web", "n2", ServerState.MAINT)
    servers = await lb.servers("web")
    assert servers["n2"].admin is ServerState.MAINT
    assert not servers["n2"].serving
    assert servers["n1"].admin is ServerState.READY
    hits_before = haproxy.nodes["n2"].hits
    seen = await answers_through_frontend(haproxy, 20)
    assert seen.keys() == {"n1", "n3"}
    assert haproxy.nodes["n2"].hits == hits_before

    await lb.set_state("web", "n2", ServerState.READY)
    assert (await lb.servers("web"))["n2"].admin is ServerState.READY
    assert (await answers_through_frontend(haproxy, 9))["n2"] == 3


async def test_drain_takes_no_new_requests(haproxy: HAProxyInstance) -> None:
    lb = adapter(haproxy)
    await lb.set_state("web", "n3", ServerState.DRAIN)
    status = (await lb.servers("web"))["n3"]
    assert status.admin is ServerState.DRAIN
    assert status.operational is OperationalState.UP
    seen = await answers_through_frontend(haproxy, 12)
    assert seen.keys() == {"n1", "n2"}


async def test_tcp_runtime_api_reads_the_same_state(haproxy: HAProxyInstance) -> None:
    lb = build_local(
        "sh-haproxy",
        HAProxyLB(type="haproxy", address=f"127.0.0.1:{haproxy.admin_port}", backend="web"),
    )
    await adapter(haproxy).set_state("web", "n1", ServerState.MAINT)
    assert (await lb.servers("web"))["n1"].admin is ServerState.MAINT
    await lb.close()


async def test_factory_builds_unix_socket_adapter_relative_to_base_dir(
    haproxy: HAProxyInstance,
) -> None:
    cfg = HAProxyLB.model_validate(
        {"type": "haproxy", "socket": haproxy.socket_path.name, "backend": "web", "timeout": "1s"}
    )
    lb = build_local("sh-haproxy", cfg, haproxy.socket_path.parent)
    assert lb.name == "sh-haproxy"
    assert set(await lb.servers("web")) == {"n1", "n2", "n3"}


async def test_unknown_backend_and_server_are_named_in_the_error(
    haproxy: HAProxyInstance,
) -> None:
    lb = adapter(haproxy)
    with pytest.raises(LoadBalancerNotFound, match="backend 'nope'") as caught:
        await lb.set_state("nope", "n1", ServerState.MAINT)
    assert caught.value.backend == "nope"
    with pytest.raises(LoadBalancerNotFound, match="backend 'web' has no server 'n9'") as caught:
        await lb.set_state("web", "n9", ServerState.MAINT)
    assert (caught.value.backend, caught.value.server) == ("web", "n9")
    assert isinstance(caught.value, LookupError)
    with pytest.raises(LoadBalancerNotFound, match="backend 'nope'"):
        await lb.servers("nope")


async def test_names_that_would_inject_cli_commands_are_refused(haproxy: HAProxyInstance) -> None:
    lb = adapter(haproxy)
    with pytest.raises(LoadBalancerInvalid):
        await lb.set_state("web", "n1 state maint; shutdown", ServerState.READY)
    assert all(s.admin is ServerState.READY for s in (await lb.servers("web")).values())


async def test_stopped_haproxy_is_unavailable(haproxy: HAProxyInstance) -> None:
    lb = adapter(haproxy)
    await haproxy.daemon.stop()
    with pytest.raises(LoadBalancerUnavailable, match="sh-haproxy") as caught:
        await lb.set_state("web", "n1", ServerState.MAINT)
    assert isinstance(caught.value, LoadBalancerError)
    assert isinstance(caught.value, ConnectionError)
    tcp = HAProxyLoadBalancer(name="t", address=("127.0.0.1", haproxy.admin_port), retry=FAST)
    with pytest.raises(LoadBalancerUnavailable):
        await tcp.servers("web")


async def test_missing_socket_is_unavailable(tmp_path: Path) -> None:
    lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=tmp_path / "none.sock", retry=FAST)
    with pytest.raises(LoadBalancerUnavailable, match=r"none\.sock"):
        await lb.servers("web")


async def test_silent_socket_times_out_and_is_retried(tmp_path: Path) -> None:
    connections = 0
    hold = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await hold.wait()
        writer.close()

    path = tmp_path / "silent.sock"
    server = await asyncio.start_unix_server(never_answer, path)
    try:
        lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=path, timeout=0.1, retry=FAST)
        with pytest.raises(LoadBalancerTimeout, match=r"did not answer in 0\.1s"):
            await lb.servers("web")
        assert connections == FAST.attempts
    finally:
        hold.set()
        server.close()
        await server.wait_closed()


def test_parser_uses_the_header_and_reads_admin_bits() -> None:
    text = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight"
        " srv_iweight srv_time_since_last_change srv_check_status srv_check_result"
        " srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id"
        " srv_fqdn srv_port srvrecord\n"
        "3 web 1 a 10.0.0.1 0 1 1 1 0 1 0 2 0 0 0 0 - 80 -\n"
        "3 web 2 b 10.0.0.2 2 8 1 1 0 1 0 2 0 0 0 0 - 80 -\n"
        "3 web 3 c 10.0.0.3 2 0 1 1 0 1 0 2 0 0 0 0 - 80 -\n"
        "3 web 4 d 10.0.0.4 2 4 1 1 0 1 0 2 0 0 0 0 - 80 -\n"
        "4 api 1 a 10.0.1.1 2 0 1 1 0 1 0 2 0 0 0 0 - 80 -\n"
    )
    servers = parse_servers_state(text, "web")
    assert [servers[n].admin for n in "abcd"] == [
        ServerState.MAINT,
        ServerState.DRAIN,
        ServerState.READY,
        ServerState.MAINT,
    ]
    assert servers["a"].operational is OperationalState.DOWN
    assert servers["b"].address == "10.0.0.2"
    with pytest.raises(ValueError, match="unexpected"):
        parse_servers_state("No such backend.\n", "web")
