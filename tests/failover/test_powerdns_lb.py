"""The PowerDNS adapter against a real pdns_server: API changes, read-back, real queries."""

from __future__ import annotations

import aiohttp
import dns.rdatatype
import pytest

from failover.lb import (
    GlobalLoadBalancer,
    LoadBalancerNotFound,
    LoadBalancerRejected,
    LoadBalancerUnavailable,
    RetryPolicy,
    build_global,
)
from failover.lb.powerdns import PowerDnsLoadBalancer
from nodevigil.core.config.schema import PowerDnsLB
from tests.failover.daemons import PowerDnsInstance, dns_query

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)


def adapter(pdns: PowerDnsInstance, **overrides: object) -> PowerDnsLoadBalancer:
    settings: dict[str, object] = {
        "name": "gslb-pdns",
        "url": pdns.url,
        "zone": pdns.zone,
        "api_key": pdns.api_key,
        "ttl": 17,
        "timeout": 1.0,
        "retry": FAST,
    }
    settings.update(overrides)
    return PowerDnsLoadBalancer(**settings)  # type: ignore[arg-type]


async def published(pdns: PowerDnsInstance, rdtype: str, name: str = "www") -> set[str]:
    """What a real resolver would be told by pdns_server."""
    answer = await dns_query(f"{name}.{pdns.zone}", rdtype, pdns.dns_port)
    rrset = answer.get_rrset(
        answer.answer, answer.question[0].name, 1, dns.rdatatype.from_text(rdtype)
    )
    return set() if rrset is None else {rdata.to_text() for rdata in rrset}


async def test_set_read_back_and_answer(powerdns_server: PowerDnsInstance) -> None:
    lb = adapter(powerdns_server)
    assert isinstance(lb, GlobalLoadBalancer)
    try:
        await lb.set_addresses("www", {"192.0.2.10", "2001:db8::10"})
        assert await lb.addresses("www") == {"192.0.2.10", "2001:db8::10"}
        assert await published(powerdns_server, "A") == {"192.0.2.10"}
        assert await published(powerdns_server, "AAAA") == {"2001:db8::10"}
        answer = await dns_query(f"www.{powerdns_server.zone}", "A", powerdns_server.dns_port)
        assert answer.answer[0].ttl == 17

        await lb.set_addresses("www", {"198.51.100.7", "198.51.100.8"})
        assert await lb.addresses("www") == {"198.51.100.7", "198.51.100.8"}
        assert await published(powerdns_server, "A") == {"198.51.100.7", "198.51.100.8"}
        assert await published(powerdns_server, "AAAA") == set()

        await lb.set_addresses("www", set())
        assert await lb.addresses("www") == set()
        assert await published(powerdns_server, "A") == set()
    finally:
        await lb.close()


async def test_factory_reads_api_key_from_file(powerdns_server: PowerDnsInstance) -> None:
    cfg = PowerDnsLB.model_validate(
        {
            "type": "powerdns",
            "url": powerdns_server.url,
            "zone": powerdns_server.zone,
            "api_key": {"secret_file": str(powerdns_server.api_key_file)},
        }
    )
    lb = build_global("gslb-pdns", cfg)
    try:
        await lb.set_addresses("api", {"203.0.113.5"})
        assert await lb.addresses("api") == {"203.0.113.5"}
        assert await lb.addresses("www") == set()
    finally:
        await lb.close()


async def test_wrong_api_key_is_rejected(powerdns_server: PowerDnsInstance) -> None:
    lb = adapter(powerdns_server, api_key="not-the-key")
    try:
        with pytest.raises(LoadBalancerRejected, match="401") as caught:
            await lb.set_addresses("www", {"192.0.2.66"})
        assert caught.value.code == "401"
    finally:
        await lb.close()
    assert await published(powerdns_server, "A") == set()


async def test_unknown_zone_is_not_found_with_the_api_error(
    powerdns_server: PowerDnsInstance,
) -> None:
    lb = adapter(powerdns_server, zone="other.test.")
    try:
        with pytest.raises(LoadBalancerNotFound, match=r"zone other\.test\. answered 404"):
            await lb.addresses("www")
    finally:
        await lb.close()


async def test_conflicting_rrset_is_rejected_with_the_api_error(
    powerdns_server: PowerDnsInstance,
) -> None:
    # An operator put a CNAME at the name: PowerDNS answers 422 with a JSON error.
    cname = {
        "name": f"www.{powerdns_server.zone}",
        "type": "CNAME",
        "ttl": 30,
        "changetype": "REPLACE",
        "records": [{"content": f"ns1.{powerdns_server.zone}", "disabled": False}],
    }
    url = f"{powerdns_server.url}/api/v1/servers/localhost/zones/{powerdns_server.zone}"
    async with (
        aiohttp.ClientSession(headers={"X-API-Key": powerdns_server.api_key}) as http,
        http.patch(url, json={"rrsets": [cname]}) as response,
    ):
        assert response.status == 204
    lb = adapter(powerdns_server)
    try:
        with pytest.raises(LoadBalancerRejected, match=r"422: .*Conflicts") as caught:
            await lb.set_addresses("www", {"192.0.2.1"})
        assert caught.value.code == "422"
    finally:
        await lb.close()


async def test_stopped_server_is_unavailable(powerdns_server: PowerDnsInstance) -> None:
    lb = adapter(powerdns_server)
    await powerdns_server.daemon.stop()
    try:
        with pytest.raises(LoadBalancerUnavailable, match="gslb-pdns"):
            await lb.set_addresses("www", {"192.0.2.1"})
    finally:
        await lb.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>a proxy's error page</html>", "not JSON"),
        (b"[" + b" " * (65 * 2**20) + b"]", "more than 64 MiB"),
    ],
)
async def test_an_answer_that_is_not_powerdns_is_a_clear_error(
    unused_tcp_port: int, body: bytes, reason: str
) -> None:
    """Whatever answers at the API's address (a captive proxy, a hostile host), the adapter
    reads a bounded answer and says what was wrong: never a ValueError, never 100 MiB in
    memory. (No real PowerDNS answers this way, so a stand-in answers here.)"""
    from aiohttp import web

    from failover.lb import LoadBalancerError

    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    lb = PowerDnsLoadBalancer(
        name="gslb-pdns",
        url=f"http://127.0.0.1:{unused_tcp_port}",
        zone="example.test.",
        api_key="k",
        timeout=5.0,
        retry=FAST,
    )
    try:
        with pytest.raises(LoadBalancerError, match=reason):
            await lb.addresses("www")
    finally:
        await lb.close()
        await runner.cleanup()
