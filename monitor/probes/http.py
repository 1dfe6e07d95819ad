"""HTTP(S) probe: status, optional body match and latency limit."""

from __future__ import annotations

import re
import time

import aiohttp

from monitor.probes.base import HedgedProber, ProbeFailure
from nodevigil.config import HttpProbe

_BODY_LIMIT = 1 << 20  # never read more than 1 MiB of a health page


class HttpProber(HedgedProber[HttpProbe]):
    """Checks one URL with a session shared by all HTTP probes."""

    def __init__(self, spec: HttpProbe, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self._session = session
        self._body = re.compile(spec.body_match) if spec.body_match else None
        self._ssl = spec.tls_verify  # True: verify with the default context
        self._timeout = aiohttp.ClientTimeout(total=spec.timeout)

    async def _attempt(self) -> str:
        spec = self.spec
        started = time.monotonic()
        async with self._session.request(
            spec.method,
            spec.url,
            headers=spec.headers,
            ssl=self._ssl,
            timeout=self._timeout,
            allow_redirects=False,
        ) as response:
            status = response.status
            body = b""
            if self._body is not None:
                body = await response.content.read(_BODY_LIMIT)
            else:
                await response.read()  # finish the response so the connection is reused
        latency = time.monotonic() - started
        if status not in spec.expect_status:
            raise ProbeFailure(f"HTTP {status}, expected {spec.expect_status}")
        if self._body is not None and not self._body.search(body.decode("utf-8", "replace")):
            raise ProbeFailure(f"HTTP {status} but body does not match {spec.body_match!r}")
        if spec.max_latency is not None and latency > spec.max_latency:
            raise ProbeFailure(
                f"HTTP {status} in {latency * 1000:.0f}ms, over {spec.max_latency * 1000:g}ms"
            )
        return f"HTTP {status} in {latency * 1000:.0f}ms"


def make_session() -> aiohttp.ClientSession:
    """One session for every HTTP probe: keep-alive, no connection cap, no cookies."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "nodevigil-probe"},
        auto_decompress=False,
    )
