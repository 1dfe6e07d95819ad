"""HTTP(S) probe: status, optional body match and latency limit."""

from __future__ import annotations

import re

from monitor.probes.base import HedgedProber, ProbeFailure, Try
from monitor.probes.httpclient import ProbeSession, Response, Target
from nodevigil.core.config import HttpProbe

_BODY_LIMIT = 1 << 20  # never read more than 1 MiB of a health page


class HttpProber(HedgedProber[HttpProbe]):
    """Checks one URL over the keep-alive pools shared by all HTTP probes."""

    def __init__(self, spec: HttpProbe, session: ProbeSession) -> None:
        self.spec = spec
        self._session = session
        self._body = re.compile(spec.body_match) if spec.body_match else None
        self._target: Target | None = None
        self._invalid = ""
        try:
            self._target = Target.build(
                spec.url, method=spec.method, headers=spec.headers, verify=spec.tls_verify
            )
        except ValueError as exc:  # judged as a failing probe, never a crashed monitor
            self._invalid = f"invalid request: {exc}"

    def _attempt(self) -> Try:
        # Completed by the connection's parser: no task and no loop callback per try.
        if self._target is None:
            invalid = Try()
            invalid.set_exception(ProbeFailure(self._invalid))
            return invalid
        return self._session.request(
            self._target,
            limit=_BODY_LIMIT,
            keep_body=self._body is not None,
            evaluate=self._evaluate,
        )

    def _evaluate(self, response: Response, latency: float) -> str:
        spec = self.spec
        status = response.status
        if status not in spec.expect_status:
            raise ProbeFailure(f"HTTP {status}, expected {spec.expect_status}")
        if self._body is not None and not self._body.search(
            response.body.decode("utf-8", "replace")
        ):
            raise ProbeFailure(f"HTTP {status} but body does not match {spec.body_match!r}")
        if spec.max_latency is not None and latency > spec.max_latency:
            raise ProbeFailure(
                f"HTTP {status} in {latency * 1000:.0f}ms, over {spec.max_latency * 1000:g}ms"
            )
        return f"HTTP {status} in {latency * 1000:.0f}ms"


def make_session() -> ProbeSession:
    """One session for every HTTP probe: keep-alive pools, no cookies, no redirects."""
    return ProbeSession()
