"""TCP, TLS (with certificate expiry), DNS and ICMP probes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Awaitable

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import icmplib

from monitor.probes.base import HedgedProber, ProbeFailure, describe
from nodevigil.core.config import DnsProbe, IcmpProbe, TcpProbe, TlsProbe
from nodevigil.core.config.schema import split_host_port
from nodevigil.core.resources import PROBES, explain, local_errno


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def tcp_connect(host: str, port: int) -> str:
    """One try of a TCP probe (and of a ``tcp://`` canary): open and close a connection."""
    started = time.monotonic()
    _, writer = await asyncio.open_connection(host, port)
    await _close(writer)
    return f"connected in {(time.monotonic() - started) * 1000:.0f}ms"


class TcpProber(HedgedProber[TcpProbe]):
    """Opens (and closes) a TCP connection."""

    def __init__(self, spec: TcpProbe) -> None:
        self.spec = spec
        self._host, self._port = split_host_port(spec.address)

    def _attempt(self) -> Awaitable[str]:
        return tcp_connect(self._host, self._port)


class TlsProber(HedgedProber[TlsProbe]):
    """Completes a TLS handshake and checks the certificate's remaining days."""

    def __init__(self, spec: TlsProbe) -> None:
        self.spec = spec
        self._host, self._port = split_host_port(spec.address)
        context = ssl.create_default_context(cafile=str(spec.ca_file) if spec.ca_file else None)
        if not spec.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._context = context

    async def _attempt(self) -> str:
        server_name = self.spec.server_name or self._host
        try:
            _, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._context, server_hostname=server_name
            )
        except ssl.SSLCertVerificationError as exc:
            raise ProbeFailure(f"certificate rejected: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise ProbeFailure(f"TLS handshake failed: {exc.reason or exc}") from None
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object else None
        finally:
            await _close(writer)
        if not cert:
            return "handshake ok (expiry not checked: verify is off)"
        days_left = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
        if days_left < self.spec.min_days_left:
            raise ProbeFailure(
                f"certificate expires in {days_left:.1f} days "
                f"(threshold {self.spec.min_days_left:g})"
            )
        return f"handshake ok, certificate valid {days_left:.0f} more days"


class DnsProber(HedgedProber[DnsProbe]):
    """Asks a DNS server one question; optionally requires given answers."""

    def __init__(self, spec: DnsProbe) -> None:
        self.spec = spec
        self._host, self._port = split_host_port(spec.server, default_port=53)
        self._rdtype = dns.rdatatype.from_text(spec.record_type)
        self._expect = {e.rstrip(".").lower() for e in spec.expect}

    async def _attempt(self) -> str:
        query = dns.message.make_query(self.spec.query, self._rdtype)
        try:
            response = await dns.asyncquery.udp(
                query, self._host, port=self._port, timeout=self.spec.timeout
            )
        except dns.exception.Timeout:
            raise TimeoutError from None
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise ProbeFailure(f"DNS answered {dns.rcode.to_text(rcode)}")
        answers = {
            item.to_text().rstrip(".").lower()
            for rrset in response.answer
            if rrset.rdtype == self._rdtype
            for item in rrset
        }
        missing = self._expect - answers
        if missing:
            raise ProbeFailure(f"DNS answer {sorted(answers)} lacks {sorted(missing)}")
        return f"DNS answered {len(answers)} record(s)"


class IcmpProber:
    """Pings an address with icmplib (raw sockets as root, datagram sockets otherwise)."""

    def __init__(self, spec: IcmpProbe) -> None:
        self.spec = spec
        self._privileged = spec.privileged if spec.privileged is not None else os.geteuid() == 0

    async def check(self) -> tuple[bool | None, str, bool]:
        """Send ``count`` echo requests; pass when any answer comes back."""
        assert self.spec.timeout is not None
        try:
            host = await icmplib.async_ping(
                self.spec.address,
                count=self.spec.count,
                interval=min(0.2, self.spec.timeout / max(self.spec.count, 1)),
                timeout=self.spec.timeout,
                privileged=self._privileged,
            )
        except (icmplib.ICMPLibError, OSError) as exc:
            local = local_errno(exc)  # icmplib wraps the socket's OSError: look beneath
            if local is not None:
                PROBES.hit(local)
                return None, f"not judged: nodevigil is {explain(local)}", False
            PROBES.clear()
            if isinstance(exc, icmplib.ICMPLibError):
                return False, f"ping failed: {type(exc).__name__}: {exc}", False
            return False, f"ping failed: {describe(exc)}", False
        PROBES.clear()
        if not host.is_alive:
            return False, f"no echo reply ({host.packets_sent} sent)", False
        return True, f"echo reply in {host.avg_rtt:.1f}ms", False
