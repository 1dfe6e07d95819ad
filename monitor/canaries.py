"""Canaries: targets that should always answer, checked so a vantage can tell it is cut off.

A canary asks one thing: does the network path to the target work? It is a URL.
``tcp://host:port`` passes when a connection opens (the simplest for etcd endpoints).
``http://`` and ``https://`` pass on *any* HTTP answer (a peer's ``/readyz`` answering 503 still
proves the path), and also when the connection opened and the far end spoke something else: a
TLS alert (an etcd that wants a client certificate), a hang-up. So an https canary's certificate
is not verified and no client certificate is sent: the answer decides only "reachable". What
fails a canary is what a broken path looks like: no answer within ``timeout``, a refused or
unreachable connection, a name that does not resolve.

The tries are the monitor's own (``monitor.probes``): hedged within ``timeout``, a refused
connection final at once, and an error that is nodevigil's own trouble (EMFILE and the like,
``nodevigil.core.resources``) inconclusive (None), never a failed canary. ``monitor.isolation``
weighs the results.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from yarl import URL

from monitor.probes.base import ProbeError, ProbeFailure, Try, describe, hedged
from monitor.probes.httpclient import ProbeSession, Response, Target
from monitor.probes.net import tcp_connect
from nodevigil.core.clock import Clock

log = logging.getLogger(__name__)

ATTEMPTS = 2  # a second try halfway through the timeout covers one lost SYN
BODY_LIMIT = 64 * 1024  # an answer is read this far at most (a /readyz is a few hundred bytes)


@dataclass(frozen=True, slots=True)
class Canary:
    """One parsed canary URL."""

    url: str
    host: str
    port: int
    http: Target | None  # the prepared request of an http(s) canary; None for tcp


def parse_canary(url: str) -> Canary:
    """The canary ``url`` names; ValueError with a readable reason when it is not one."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    host, port = parsed.host, parsed.port  # http(s) default to 80 and 443, tcp to nothing
    if parsed.scheme not in ("tcp", "http", "https"):
        raise ValueError(f"{url!r}: a canary is tcp://host:port or an http(s):// URL")
    if not host:
        raise ValueError(f"{url!r} has no host")
    if port is None:
        raise ValueError(f"{url!r} has no port")
    if parsed.scheme == "tcp":
        if parsed.path not in ("", "/") or parsed.query_string:
            raise ValueError(f"{url!r}: a tcp canary is tcp://host:port, nothing after")
        return Canary(url, host, port, None)
    return Canary(url, host, port, Target.build(url, headers={}, verify=False))


def _any_answer(response: Response, latency: float) -> str:
    """Every HTTP answer proves the path (evaluate of an http canary)."""
    return f"HTTP {response.status} in {latency * 1000:.0f}ms"


async def _http_try(session: ProbeSession, target: Target) -> str:
    """One try of an http(s) canary on the shared keep-alive pools."""
    exchange = session.request(target, limit=BODY_LIMIT, keep_body=False, evaluate=_any_answer)
    try:
        return await exchange.wait()
    except (ProbeError, ProbeFailure, ssl.SSLError) as exc:
        # Raised only once a connection opened (a stale kept-alive one is retried first): the
        # far end answered, in TLS or by hanging up, and the path works.
        return f"answered, not in HTTP: {exc}"


class Canaries:
    """Checks every canary each ``interval`` on the monotonic clock while the block runs.

    ``targets`` is called at the start of every round (the set changes as peers join and
    leave); a target's result is None until its first check ends.
    """

    def __init__(
        self,
        targets: Callable[[], Sequence[str]],
        *,
        interval: float,
        timeout: float,
        clock: Clock,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._targets = targets
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._current: tuple[str, ...] = ()
        self._results: dict[str, bool | None] = {}
        self._detail: dict[str, str] = {}
        self._parsed: dict[str, Canary | str] = {}  # url -> canary, or why it is not one
        self._targets_broken = False
        self._session: ProbeSession | None = None
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds completed (for tests and the API)

    async def __aenter__(self) -> Self:
        self._session = ProbeSession()
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        self._task = group.create_task(self._run(), name="canaries")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._group is not None and self._task is not None and self._session is not None
        self._task.cancel()
        try:
            # The block's own exception goes on by itself; the group only waits for the task.
            await self._group.__aexit__(None, None, None)
        finally:
            await self._session.close()
            self._group = self._task = None

    def results(self) -> Mapping[str, bool | None]:
        """Target -> answered (True), failed (False), not checked or not judged (None)."""
        return {target: self._results.get(target) for target in self._current}

    def detail(self) -> Mapping[str, str]:
        """Target -> what its last check said, for every current target not answering."""
        return {
            target: self._detail[target]
            for target in self._current
            if target in self._detail and self._results.get(target) is not True
        }

    async def _run(self) -> None:
        while True:
            started = self._clock.monotonic()
            await self._round()
            self.rounds += 1
            await self._clock.sleep(max(0.0, started + self._interval - self._clock.monotonic()))

    async def _round(self) -> None:
        """Check every current target once, together."""
        targets = self._read_targets()
        self._current = targets
        for gone in set(self._results) - set(targets):
            self._results.pop(gone, None)
            self._detail.pop(gone, None)
        self._parsed = {t: self._parsed.get(t) or self._parse(t) for t in targets}
        outcomes = await asyncio.gather(*(self._check(self._parsed[t]) for t in targets))
        for target, (ok, text) in zip(targets, outcomes, strict=True):
            self._record(target, ok, text)

    def _read_targets(self) -> tuple[str, ...]:
        try:
            targets = tuple(dict.fromkeys(self._targets()))
        except Exception:  # the caller's list is broken: keep checking the last one
            if not self._targets_broken:
                log.exception("canaries: cannot read the targets; checking the last ones")
            self._targets_broken = True
            return self._current
        self._targets_broken = False
        return targets

    @staticmethod
    def _parse(url: str) -> Canary | str:
        try:
            return parse_canary(url)
        except ValueError as exc:
            log.warning("canary %s is never checked: %s", url, exc)
            return f"not a canary: {exc}"

    async def _check(self, canary: Canary | str) -> tuple[bool | None, str]:
        if isinstance(canary, str):
            return None, canary
        try:
            return await hedged(self._attempt(canary), budget=self._timeout, attempts=ATTEMPTS)
        except Exception as exc:  # hedged never raises for a try's error; be sure anyway
            log.exception("canary %s: the check itself failed", canary.url)
            return None, f"not judged: {describe(exc)}"

    def _attempt(self, canary: Canary) -> Callable[[], Awaitable[str] | Try]:
        """One try of ``canary``: an HTTP exchange on the shared pools, or a TCP connect."""
        session, target = self._session, canary.http
        assert session is not None
        if target is None:
            return lambda: tcp_connect(canary.host, canary.port)
        return lambda: _http_try(session, target)

    def _record(self, target: str, ok: bool | None, text: str) -> None:
        before = self._results.get(target)
        self._results[target] = ok
        self._detail[target] = text
        # Logged on change only (once when it starts failing, once when it answers again).
        if ok is False and before is not False:
            log.warning("canary %s fails: %s", target, text)
        elif ok is True and before is False:
            log.info("canary %s answers again: %s", target, text)
