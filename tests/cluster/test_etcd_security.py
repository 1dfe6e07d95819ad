"""EtcdClient and the leader lease against a real 3-member etcd that serves clients over https
only, requires client certificates and (in the second cluster) has its own auth on, as
production runs it (tests/etcd_cluster.py, ``make_tls``).

What must hold: the lease is won and renewed over https with a client certificate, and with a
user whose role is limited to the installation's prefix; a server certificate from another CA,
no client certificate, a wrong password, a key outside the prefix and a client certificate etcd's
gateway refuses are each refused with an error that says which, and a lease that meets one of
them is ``fenced``: it never acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from nodevigil.app.leadership import LeaderLease, Role
from nodevigil.core.clock import SystemClock
from nodevigil.state.etcd import (
    EtcdClient,
    EtcdRejected,
    EtcdUnavailable,
    EventType,
    WatchEvent,
)
from tests.etcd_cluster import ETCD, EtcdCluster, TlsFiles, etcd_cluster, make_tls

pytestmark = [
    pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server"),
    pytest.mark.timeout(60),
]


@pytest.fixture(autouse=True)
def collect_refused_handshakes() -> Iterator[None]:
    """A connection left open (a ResourceWarning when collected) is reported against the test
    that left it, not whichever test the collector happens to run in next."""
    yield
    gc.collect()


USER, PASSWORD = "nodevigil", "a-test-password-on-loopback"
PREFIX = "/nodevigil/secure/"  # the auth cluster's user may touch only this
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[EtcdCluster]:
    """https only, a client certificate required; no etcd auth."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd-tls"), tls=tls) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[EtcdCluster]:
    """As ``tls_etcd``, and etcd's auth on: ``USER`` may read and write under ``PREFIX`` only."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd-auth"), tls=tls) as cluster:
        cluster.enable_auth(user=USER, password=PASSWORD, prefix=PREFIX)
        cluster.wait_healthy()  # as root: the harness's own calls log in too
        yield cluster


def files(
    tls: TlsFiles, *, ca: Path | None = None, cert: bool = True
) -> tuple[str, str | None, str | None]:
    """The client's ``tls`` argument: the CA (``ca`` instead), the client certificate or none."""
    chosen = str(ca or tls.ca_file)
    if not cert:
        return (chosen, None, None)
    return (chosen, str(tls.client_cert), str(tls.client_key))


@asynccontextmanager
async def lease_over(client: EtcdClient, me: str) -> AsyncIterator[LeaderLease]:
    """A leader lease on ``client``, driven by ``tick()``; its lease revoked afterwards."""
    lease = LeaderLease(
        client, me=me, ttl=5.0, renew_every=1.0, timeout=TIMEOUT, clock=SystemClock()
    )
    try:
        yield lease
    finally:
        await lease.step_down(hold_off=0.0)


async def first_event(client: EtcdClient, revision: int) -> WatchEvent:
    """The first change under the client's prefix from ``revision`` on; the watch is closed
    here, before the client, not left to the garbage collector with its connection."""
    async with contextlib.aclosing(client.watch("", start_revision=revision)) as events:
        async for event in events:
            return event
    raise AssertionError("the watch ended")


def own_prefix() -> str:
    return f"{PREFIX}{uuid.uuid4().hex[:8]}/"


async def test_the_client_and_a_lease_work_over_https_with_a_client_certificate(
    tls_etcd: EtcdCluster, tls: TlsFiles
) -> None:
    assert all(url.startswith("https://") for url in tls_etcd.endpoints)
    prefix = own_prefix()
    async with (
        EtcdClient(tls_etcd.endpoints, prefix=prefix, timeout=TIMEOUT, tls=files(tls)) as one,
        EtcdClient(tls_etcd.endpoints, prefix=prefix, timeout=TIMEOUT, tls=files(tls)) as two,
    ):
        await one.put("hello", b"over https")
        assert (got := await two.get("hello")) is not None and got.value == b"over https"
        _, revision = await one.range("")
        seen = asyncio.create_task(first_event(two, revision + 1))
        await asyncio.sleep(0.1)  # the watch is open before the change it must see
        await one.put("watched", b"1")
        event = await asyncio.wait_for(seen, 5)
        assert (event.type, event.kv.key) == (EventType.PUT, "watched")

        async with lease_over(one, "ops-1") as first, lease_over(two, "ops-2") as second:
            assert await first.tick() is Role.LEADER
            assert await second.tick() is Role.STANDBY
            leader = await one.get("leader")
            assert leader is not None and leader.value == b"ops-1"
            assert first.may_act() and first.epoch == leader.create_revision
            await first.tick()  # a renewal (keepalive) over https too
            assert first.may_act() and not second.may_act()
            await first.step_down(hold_off=5.0)  # the hand-over: revoked over https
            assert await second.tick() is Role.LEADER
            assert second.epoch is not None and second.epoch > leader.create_revision


async def test_a_server_certificate_from_another_ca_is_refused_clearly(
    tls_etcd: EtcdCluster, tls: TlsFiles
) -> None:
    wrong = files(tls, ca=tls.other_ca_file)
    async with EtcdClient(tls_etcd.endpoints, prefix=own_prefix(), timeout=TIMEOUT, tls=wrong) as c:
        with pytest.raises(EtcdUnavailable) as caught:
            await c.get("anything")
        assert "TLS: etcd's certificate is not trusted with the CA given (tls ca_file)" in str(
            caught.value
        )
        async with lease_over(c, "ops-1") as lease:
            assert await lease.tick() is Role.FENCED
            assert not lease.may_act() and lease.epoch is None
            assert "etcd's certificate is not trusted" in lease.reason()


async def test_without_a_client_certificate_etcd_refuses_clearly(
    tls_etcd: EtcdCluster, tls: TlsFiles
) -> None:
    bare = files(tls, cert=False)
    async with EtcdClient(tls_etcd.endpoints, prefix=own_prefix(), timeout=TIMEOUT, tls=bare) as c:
        with pytest.raises(EtcdUnavailable) as caught:
            await c.put("anything", b"1")
        assert "TLS: etcd refused this client's certificate (none given" in str(caught.value)
        async with lease_over(c, "ops-1") as lease:
            assert await lease.tick() is Role.FENCED
            assert not lease.may_act()
            assert "etcd refused this client's certificate" in lease.reason()


async def test_a_user_and_password_win_the_lease_and_reach_only_their_prefix(
    auth_etcd: EtcdCluster, tls: TlsFiles
) -> None:
    endpoints, cert = auth_etcd.endpoints, files(tls)
    login = {"username": USER, "password": PASSWORD}
    async with (
        EtcdClient(endpoints, prefix=own_prefix(), timeout=TIMEOUT, tls=cert, **login) as one,
        EtcdClient(endpoints, prefix=own_prefix(), timeout=TIMEOUT, tls=cert, **login) as other,
    ):
        async with lease_over(one, "ops-1") as lease:
            assert await lease.tick() is Role.LEADER
            assert await lease.tick() is Role.LEADER  # renewed as the user
            assert lease.may_act() and lease.epoch is not None
        # Every endpoint takes the same login (each hands out its own token).
        for endpoint in endpoints:
            async with EtcdClient(
                [endpoint], prefix=own_prefix(), timeout=TIMEOUT, tls=cert, **login
            ) as single:
                await single.put("mine", b"1")
        assert await other.get("mine") is None  # another prefix of the same user's: fine
    async with EtcdClient(
        endpoints, prefix="/somebody-else/", timeout=TIMEOUT, tls=cert, **login
    ) as outside:
        with pytest.raises(EtcdRejected) as caught:
            await outside.put("theirs", b"1")
        assert "permission denied" in str(caught.value) and caught.value.code == 7


async def test_a_wrong_password_is_refused_at_once_and_the_lease_never_acts(
    auth_etcd: EtcdCluster, tls: TlsFiles
) -> None:
    cert = files(tls)
    async with EtcdClient(
        auth_etcd.endpoints,
        prefix=own_prefix(),
        timeout=TIMEOUT,
        tls=cert,
        username=USER,
        password="not-the-password",
    ) as wrong:
        started = time.monotonic()
        with pytest.raises(EtcdRejected) as caught:
            await wrong.get("anything")
        # Refused, not "unavailable": the same answer from every member would not change.
        assert time.monotonic() - started < TIMEOUT
        assert "authentication failed, invalid user ID or password" in str(caught.value)
        async with lease_over(wrong, "ops-1") as lease:
            assert await lease.tick() is Role.FENCED
            assert not lease.may_act()
            assert lease.reason().startswith("etcd refused the lease's calls: ")
            assert "authentication failed" in lease.reason()
    async with EtcdClient(
        auth_etcd.endpoints, prefix=own_prefix(), timeout=TIMEOUT, tls=cert
    ) as anon:
        with pytest.raises(EtcdRejected, match="user name is empty"):
            await anon.get("anything")


async def test_a_client_certificate_with_a_common_name_is_refused_clearly_while_auth_is_on(
    auth_etcd: EtcdCluster, tls: TlsFiles
) -> None:
    # etcd's JSON gateway answers HTTP 400 in plain text to such a certificate, whatever the
    # login: the error must say so and what to do, not just "HTTP 400".
    named = (str(tls.ca_file), str(tls.named_cert), str(tls.named_key))
    async with EtcdClient(
        auth_etcd.endpoints,
        prefix=own_prefix(),
        timeout=TIMEOUT,
        tls=named,
        username=USER,
        password=PASSWORD,
    ) as client:
        with pytest.raises(EtcdRejected) as caught:
            await client.get("anything")
        text = str(caught.value)
        assert "CommonName of client sending a request against gateway" in text
        assert "a client certificate without one" in text


async def test_a_watch_opened_after_etcd_forgot_the_login_logs_in_again(
    auth_etcd: EtcdCluster, tls: TlsFiles
) -> None:
    # etcd forgets a user's logins when its password is set (also after --auth-token-ttl of
    # idleness); a watch opened with such a token is cancelled in a 200 answer, with no error
    # to retry on, so the reopen must log in again or it is refused for ever.
    cert, prefix, endpoint = files(tls), own_prefix(), auth_etcd.endpoints[0]
    login = {"username": USER, "password": PASSWORD}
    async with (
        EtcdClient([endpoint], prefix=prefix, timeout=TIMEOUT, tls=cert, **login) as watcher,
        EtcdClient([endpoint], prefix=prefix, timeout=TIMEOUT, tls=cert, **login) as writer,
    ):
        _, revision = await watcher.range("")  # logs in
        leader = auth_etcd.leader()
        auth_etcd.call(leader, "/v3/auth/user/changepw", {"name": USER, "password": PASSWORD})
        seen = asyncio.create_task(first_event(watcher, revision + 1))
        await writer.put("after", b"1")  # the watcher itself makes no other call
        event = await asyncio.wait_for(seen, 5)
        assert event.kv.key == "after"
