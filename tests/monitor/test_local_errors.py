"""A probe that fails for want of nodevigil's own resources is inconclusive, never a failure.

The errno classification in isolation, then hedged tries, then real probes run while this
process really is out of descriptors (its soft limit lowered, the rest filled with /dev/null).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import ssl
from collections.abc import Iterator

import icmplib
import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import MonitorMetrics
from monitor.probes import build_prober
from monitor.probes.base import hedged
from monitor.probes.http import make_session
from nodevigil.core.config.schema import DnsProbe, HttpProbe, TcpProbe
from nodevigil.core.resources import PROBES, LocalTrouble, local_errno, raise_descriptor_limit
from tests.http_target import healthy_target


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize(
    "code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL]
)
def test_local_exhaustion_errnos_are_ours(code: int) -> None:
    assert local_errno(oserror(code)) == errno.errorcode[code]


@pytest.mark.parametrize(
    "code",
    [
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPERM,
        errno.EACCES,
    ],
)
def test_what_the_network_or_the_node_answered_is_not_ours(code: int) -> None:
    assert local_errno(oserror(code)) is None


def test_tls_and_resolver_errors_are_never_mistaken_for_errnos() -> None:
    # ssl.SSLError and socket.gaierror carry their own numbering in ``errno``.
    assert local_errno(ssl.SSLError(errno.ENOMEM, "ssl")) is None
    assert local_errno(socket.gaierror(errno.EMFILE, "gai")) is None
    assert local_errno(TimeoutError()) is None


def test_a_wrapped_local_error_is_found_beneath_its_wrapper() -> None:
    try:
        try:
            raise oserror(errno.EMFILE)
        except OSError as err:
            raise icmplib.ICMPSocketError(str(err))  # noqa: B904 (icmplib does this)
    except icmplib.ICMPSocketError as wrapped:
        assert local_errno(wrapped) == "EMFILE"


def test_an_episode_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    trouble = LocalTrouble("probes", monotonic=lambda: now[0], quiet=5.0)
    with caplog.at_level(logging.WARNING, logger="nodevigil.core.resources"):
        for _ in range(1000):
            trouble.hit("EMFILE")
            trouble.clear()  # a pooled connection still works: not the end yet
            now[0] += 0.001
        now[0] += 5.0
        trouble.clear()
        trouble.clear()
    lines = [r.getMessage() for r in caplog.records if r.name == "nodevigil.core.resources"]
    assert len(lines) == 2, lines
    assert "out of file descriptors (EMFILE)" in lines[0]
    assert "resources again" in lines[1] and "1000 local errors" in lines[1]
    assert trouble.counts["EMFILE"] == 1000


async def test_a_local_error_in_one_try_is_not_a_failure_and_the_next_try_still_runs() -> None:
    trouble = LocalTrouble("probes")
    tries = 0

    async def emfile_then_answer() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise oserror(errno.EMFILE)
        return "answered"

    assert await hedged(emfile_then_answer, budget=0.4, attempts=2, trouble=trouble) == (
        True,
        "answered",
    )

    async def emfile() -> str:
        raise oserror(errno.EMFILE)

    ok, detail = await hedged(emfile, budget=0.4, attempts=3, trouble=trouble)
    assert ok is None and "out of file descriptors (EMFILE)" in detail
    assert trouble.counts["EMFILE"] == 4

    tries = 0

    async def emfile_then_silence() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise oserror(errno.ENOBUFS)
        await asyncio.sleep(1)
        return "too late"

    ok, detail = await hedged(emfile_then_silence, budget=0.2, attempts=2, trouble=trouble)
    assert ok is None, detail  # one try never reached the node: the silence proves nothing


async def test_a_definite_answer_still_wins_over_a_local_error() -> None:
    trouble = LocalTrouble("probes")
    tries = 0

    async def emfile_then_refused() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise oserror(errno.EMFILE)
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    ok, detail = await hedged(emfile_then_refused, budget=0.4, attempts=3, trouble=trouble)
    assert (ok, detail) == (False, "connection refused")


@contextlib.contextmanager
def out_of_descriptors(spare: int = 0) -> Iterator[None]:
    """Make this process really run out: lower its soft limit and fill what is left."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 64, hard))
    held: list[int] = []
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        for fd in held[:spare]:
            os.close(fd)
        del held[:spare]
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_real_probes_out_of_descriptors_are_inconclusive_and_counted() -> None:
    """Before the fix each of these was a failure ("too many open files")."""

    async with healthy_target() as port, make_session() as session:
        registry = CollectorRegistry()
        MonitorMetrics(registry)
        emfile = {"errno": "EMFILE"}
        before = registry.get_sample_value("nodevigil_probe_local_errors_total", emfile)
        timing = {"interval": "1s", "timeout": "300ms", "attempts": 2}
        url = f"http://127.0.0.1:{port}/"
        specs: list[HttpProbe | TcpProbe | DnsProbe] = [
            HttpProbe.model_validate({"type": "http", "url": url, **timing}),
            TcpProbe.model_validate({"type": "tcp", "address": f"127.0.0.1:{port}", **timing}),
            DnsProbe.model_validate(
                {"type": "dns", "server": f"127.0.0.1:{port}", "query": "a.example.", **timing}
            ),
        ]
        probers = [build_prober(spec, session) for spec in specs]
        assert [(await p.check())[0] for p in probers[:2]] == [True, True]
        with out_of_descriptors():
            results = [await p.check() for p in probers]
        assert [r[0] for r in results] == [None, None, None], results
        assert all("out of file descriptors (EMFILE)" in r[1] for r in results), results
        after = registry.get_sample_value("nodevigil_probe_local_errors_total", emfile)
        assert (after or 0) - (before or 0) >= 3
        assert [(await p.check())[0] for p in probers[:2]] == [True, True]
    assert PROBES.counts["EMFILE"] >= 3


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    limits = {resource.RLIMIT_NOFILE: (1024, 65536)}

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        limits[which] = value

    assert raise_descriptor_limit(getrlimit=limits.__getitem__, setrlimit=setrlimit) == (
        1024,
        65536,
    )
    assert limits[resource.RLIMIT_NOFILE] == (65536, 65536)
    assert raise_descriptor_limit(getrlimit=limits.__getitem__, setrlimit=setrlimit) == (
        65536,
        65536,
    )
