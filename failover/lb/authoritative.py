"""Ask every authoritative server of a zone what it answers: the proof that a DNS change moved.

A dynamic update lands on the primary; the secondaries follow by zone transfer after a NOTIFY
(or their SOA refresh). Resolvers ask any server of the zone's NS set, so a change has reached
clients' resolvers only when every one of them answers it. The NS set and its addresses are
read from the primary (in-zone glue), else from the system resolver; each server is asked on
the primary's port (53 in production). An explicit list of servers (``host:port``) replaces
the NS set where it cannot be used as published (hidden secondaries, other ports, tests).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from failover.lb.errors import LoadBalancerError, LoadBalancerRejected, LoadBalancerTimeout


@dataclass(frozen=True, slots=True)
class NameServer:
    """One authoritative server of the zone: its NS name, one address of it and the port."""

    name: str
    address: str
    port: int = 53

    def __str__(self) -> str:
        where = self.address if self.port == 53 else f"{self.address}:{self.port}"
        return f"{self.name} ({where})" if self.name else where


@dataclass(frozen=True, slots=True)
class ServerAnswer:
    """What one authoritative server answered: its zone's SOA serial and the record's
    addresses and TTL, or why it did not answer."""

    server: NameServer
    serial: int | None = None
    addresses: frozenset[str] | None = None
    ttl: int | None = None
    error: str | None = None


def serial_at_least(serial: int, target: int) -> bool:
    """RFC 1982 serial arithmetic: whether ``serial`` is ``target`` or newer."""
    return serial == target or 0 < (serial - target) % 2**32 < 2**31


async def _ask(
    message: dns.message.Message, host: str, port: int, limit: float
) -> dns.message.Message:
    try:
        response, _ = await dns.asyncquery.udp_with_fallback(
            message, host, timeout=limit, port=port
        )
    except dns.exception.Timeout as exc:
        raise LoadBalancerTimeout(f"did not answer in {limit:g}s") from exc
    except (OSError, dns.exception.DNSException) as exc:
        raise LoadBalancerError(str(exc) or type(exc).__name__) from exc
    return response


def _rrset(
    response: dns.message.Message, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> list[str]:
    rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
    return [] if rrset is None else [r.to_text() for r in rrset]


async def name_servers(
    zone: dns.name.Name, primary: str, port: int, limit: float
) -> list[NameServer]:
    """The zone's NS set, as the primary answers it, each NS name with one address."""
    try:
        return await _name_servers(zone, primary, port, limit)
    except LoadBalancerRejected:
        raise
    except LoadBalancerError as exc:
        raise type(exc)(f"reading the NS set of {zone} from {primary}:{port}: {exc}") from exc


async def _name_servers(
    zone: dns.name.Name, primary: str, port: int, limit: float
) -> list[NameServer]:
    response = await _ask(dns.message.make_query(zone, dns.rdatatype.NS), primary, port, limit)
    if response.rcode() != dns.rcode.NOERROR:
        code = dns.rcode.to_text(response.rcode())
        raise LoadBalancerRejected(f"NS {zone} at {primary}:{port} answered {code}", code=code)
    names = sorted(_rrset(response, zone, dns.rdatatype.NS))
    if not names:
        raise LoadBalancerRejected(f"{primary}:{port} answers no NS set for {zone}", code="NS")
    found: list[NameServer] = []
    for ns in names:
        fqdn = dns.name.from_text(ns)
        addresses: list[str] = []
        if fqdn.is_subdomain(zone):  # glue the primary serves itself
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                query = dns.message.make_query(fqdn, rdtype)
                addresses += _rrset(await _ask(query, primary, port, limit), fqdn, rdtype)
        if not addresses:
            addresses = await resolve(ns, port)
        if not addresses:
            raise LoadBalancerRejected(f"NS {ns} of {zone} has no address", code="NS")
        found.append(NameServer(ns, sorted(addresses)[0], port))
    return found


async def resolve(name: str, port: int = 53) -> list[str]:
    """The addresses the system resolver gives ``name`` (empty when none)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_DGRAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


async def ask_server(
    server: NameServer, zone: dns.name.Name, record: dns.name.Name, limit: float
) -> ServerAnswer:
    """One server's SOA serial and the record's A/AAAA set (empty when it has none)."""
    try:
        soa = await _ask(
            dns.message.make_query(zone, dns.rdatatype.SOA), server.address, server.port, limit
        )
        serials = _rrset(soa, zone, dns.rdatatype.SOA)
        if soa.rcode() != dns.rcode.NOERROR or not serials:
            code = dns.rcode.to_text(soa.rcode())
            return ServerAnswer(server, error=f"SOA answered {code} without a serial")
        serial = int(serials[0].split()[2])
        addresses: set[str] = set()
        ttls: list[int] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            response = await _ask(
                dns.message.make_query(record, rdtype), server.address, server.port, limit
            )
            if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                code = dns.rcode.to_text(response.rcode())
                return ServerAnswer(server, serial=serial, error=f"{record} answered {code}")
            rrset = response.get_rrset(response.answer, record, dns.rdataclass.IN, rdtype)
            if rrset is not None:
                addresses.update(r.to_text() for r in rrset)
                ttls.append(rrset.ttl)
        return ServerAnswer(server, serial, frozenset(addresses), max(ttls, default=None))
    except LoadBalancerError as exc:
        return ServerAnswer(server, error=str(exc))


async def ask_all(
    servers: list[NameServer],
    zone: dns.name.Name,
    record: dns.name.Name,
    limit: float,
) -> list[ServerAnswer]:
    """Ask every server at once; one that does not answer is an answer with an error."""
    return list(await asyncio.gather(*(ask_server(s, zone, record, limit) for s in servers)))
