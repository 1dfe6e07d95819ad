"""The RFC 2136 adapter against a real BIND: signed updates, read-back, real queries, errors."""

from __future__ import annotations

from pathlib import Path

import dns.rcode
import dns.rdatatype
import pytest

from failover.lb import (
    GlobalLoadBalancer,
    LoadBalancerInvalid,
    LoadBalancerRejected,
    LoadBalancerUnavailable,
    RetryPolicy,
    build_global,
)
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from nodevigil.core.config.schema import Rfc2136LB
from tests.failover.daemons import BindInstance, dns_query, tsig_secret

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)


def adapter(bind: BindInstance, **overrides: object) -> Rfc2136LoadBalancer:
    settings: dict[str, object] = {
        "name": "gslb",
        "host": "127.0.0.1",
        "port": bind.port,
        "zone": bind.zone,
        "ttl": 42,
        "timeout": 1.0,
        "tsig_name": bind.key_name,
        "tsig_secret": bind.key_file.read_text().strip(),
        "tsig_algorithm": bind.key_algorithm,
        "retry": FAST,
    }
    settings.update(overrides)
    return Rfc2136LoadBalancer(**settings)  # type: ignore[arg-type]


async def published(bind: BindInstance, rdtype: str, name: str = "www") -> set[str]:
    """What a real resolver would be told."""
    answer = await dns_query(f"{name}.{bind.zone}", rdtype, bind.port)
    rrset = answer.get_rrset(
        answer.answer, answer.question[0].name, 1, dns.rdatatype.from_text(rdtype)
    )
    return set() if rrset is None else {rdata.to_text() for rdata in rrset}


async def test_set_and_read_back_v4_and_v6(bind_server: BindInstance) -> None:
    lb = adapter(bind_server)
    assert isinstance(lb, GlobalLoadBalancer)
    await lb.set_addresses("www", {"192.0.2.10", "192.0.2.11", "2001:db8::10"})
    assert await lb.addresses("www") == {"192.0.2.10", "192.0.2.11", "2001:db8::10"}
    assert await published(bind_server, "A") == {"192.0.2.10", "192.0.2.11"}
    assert await published(bind_server, "AAAA") == {"2001:db8::10"}
    answer = await dns_query(f"www.{bind_server.zone}", "A", bind_server.port)
    assert answer.answer[0].ttl == 42


async def test_replace_withdraws_old_addresses_in_one_step(bind_server: BindInstance) -> None:
    lb = adapter(bind_server)
    await lb.set_addresses("www", {"192.0.2.10", "2001:db8::10"})
    await lb.set_addresses("www", {"198.51.100.7"})
    assert await lb.addresses("www") == {"198.51.100.7"}
    assert await published(bind_server, "A") == {"198.51.100.7"}
    assert await published(bind_server, "AAAA") == set()
    await lb.set_addresses("www", set())
    assert await lb.addresses("www") == set()
    answer = await dns_query(f"www.{bind_server.zone}", "A", bind_server.port)
    assert answer.rcode() == dns.rcode.NXDOMAIN


async def test_unknown_record_has_no_addresses(bind_server: BindInstance) -> None:
    assert await adapter(bind_server).addresses("nothing-here") == set()


async def test_factory_reads_tsig_secret_file(bind_server: BindInstance) -> None:
    cfg = Rfc2136LB.model_validate(
        {
            "type": "rfc2136",
            "server": bind_server.server,
            "zone": bind_server.zone.rstrip("."),
            "ttl": 5,
            "tsig": {
                "name": bind_server.key_name,
                "algorithm": bind_server.key_algorithm,
                "secret_file": bind_server.key_file.name,
            },
        }
    )
    lb = build_global("gslb", cfg, bind_server.key_file.parent)
    await lb.set_addresses("api", {"203.0.113.5"})
    assert await published(bind_server, "A", "api") == {"203.0.113.5"}
    await lb.close()


async def test_wrong_tsig_secret_is_rejected_with_its_rcode(bind_server: BindInstance) -> None:
    await adapter(bind_server).set_addresses("www", {"192.0.2.1"})
    forged = adapter(bind_server, tsig_secret=tsig_secret())
    with pytest.raises(LoadBalancerRejected, match="BADSIG") as caught:
        await forged.set_addresses("www", {"192.0.2.66"})
    assert caught.value.code == "BADSIG"
    assert await published(bind_server, "A") == {"192.0.2.1"}


async def test_unknown_tsig_key_is_rejected(bind_server: BindInstance) -> None:
    stranger = adapter(bind_server, tsig_name="someone-else")
    with pytest.raises(LoadBalancerRejected, match="BADKEY") as caught:
        await stranger.set_addresses("www", {"192.0.2.66"})
    assert caught.value.code == "BADKEY"
    assert await published(bind_server, "A") == set()


async def test_unsigned_update_is_refused(bind_server: BindInstance) -> None:
    unsigned = adapter(bind_server, tsig_name=None, tsig_secret=None)
    with pytest.raises(LoadBalancerRejected, match="REFUSED") as caught:
        await unsigned.set_addresses("www", {"192.0.2.66"})
    assert caught.value.code == "REFUSED"


async def test_update_outside_the_served_zone_is_notauth(bind_server: BindInstance) -> None:
    other = adapter(bind_server, zone="other.test.")
    with pytest.raises(LoadBalancerRejected, match="NOTAUTH") as caught:
        await other.set_addresses("www", {"192.0.2.66"})
    assert caught.value.code == "NOTAUTH"


async def test_invalid_addresses_and_names_are_refused_before_sending(
    bind_server: BindInstance,
) -> None:
    lb = adapter(bind_server)
    with pytest.raises(LoadBalancerInvalid, match="not an IP address"):
        await lb.set_addresses("www", {"www.example.net"})
    with pytest.raises(LoadBalancerInvalid, match="outside the zone"):
        await lb.set_addresses("www.example.net.", {"192.0.2.1"})
    assert await published(bind_server, "A") == set()


async def test_stopped_server_is_unavailable(bind_server: BindInstance) -> None:
    lb = adapter(bind_server, timeout=0.3)
    await bind_server.daemon.stop()
    with pytest.raises(LoadBalancerUnavailable, match="gslb"):
        await lb.set_addresses("www", {"192.0.2.1"})
    with pytest.raises(LoadBalancerUnavailable):
        await lb.addresses("www")


def test_bad_secret_is_a_value_error_without_the_secret() -> None:
    with pytest.raises(ValueError, match="not valid base64") as caught:
        Rfc2136LoadBalancer(
            name="gslb",
            host="127.0.0.1",
            zone="example.test.",
            tsig_name="k",
            tsig_secret="%%%not-base64%%%",
        )
    assert "%%%" not in str(caught.value)


def test_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    from nodevigil.core.errors import ConfigError

    cfg = Rfc2136LB.model_validate(
        {
            "type": "rfc2136",
            "server": "127.0.0.1:53",
            "zone": "example.test",
            "tsig": {"name": "k", "secret_file": "absent.key"},
        }
    )
    with pytest.raises(ConfigError, match=r"absent\.key"):
        build_global("gslb", cfg, tmp_path)


@pytest.mark.parametrize("algorithm", ["hmac-md5", "hmac-sha512"])
async def test_other_tsig_algorithms_from_the_config(tmp_path: Path, algorithm: str) -> None:
    from tests.failover.conftest import require_program
    from tests.failover.daemons import NAMED, run_bind

    require_program(NAMED, "bind9")
    async with run_bind(tmp_path / "bind", algorithm=algorithm) as bind:
        lb = adapter(bind)
        await lb.set_addresses("www", {"192.0.2.77"})
        assert await published(bind, "A") == {"192.0.2.77"}
