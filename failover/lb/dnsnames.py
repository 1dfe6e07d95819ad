"""Helpers shared by the DNS adapters: record names and address sets."""

from __future__ import annotations

import ipaddress

import dns.name

from failover.lb.errors import LoadBalancerInvalid


def zone_name(zone: str) -> dns.name.Name:
    """The zone as an absolute DNS name (``example.com`` and ``example.com.`` are the same)."""
    return dns.name.from_text(zone)


def record_name(record: str, zone: dns.name.Name) -> dns.name.Name:
    """The absolute name of ``record`` written relative to ``zone`` (``@`` is the apex)."""
    try:
        if record in ("", "@"):
            return zone
        name = dns.name.from_text(record, origin=zone)
    except dns.name.NameTooLong as exc:
        raise LoadBalancerInvalid(f"record {record!r} is too long") from exc
    if not name.is_subdomain(zone):
        raise LoadBalancerInvalid(f"record {record!r} is outside the zone {zone}")
    return name


def split_addresses(addresses: set[str]) -> tuple[list[str], list[str]]:
    """Split into sorted IPv4 and IPv6 text forms; anything else is LoadBalancerInvalid."""
    v4: list[str] = []
    v6: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise LoadBalancerInvalid(f"{text!r} is not an IP address") from exc
        (v4 if address.version == 4 else v6).append(str(address))
    return sorted(v4), sorted(v6)
