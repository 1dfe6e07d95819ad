"""The PowerDNS Authoritative HTTP API as a global load balancer.

Fencing (a cluster: ``authority``). The HTTP API has no prerequisites: a PATCH cannot be made
conditional on a fence record, so PowerDNS cannot refuse a deposed leader itself. As for
HAProxy, a change is sent only while this leader's lease covers the request's timeout (checked
before each attempt); the remaining window is documented in docs/operations.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from failover.lb.authoritative import NameServer, ServerAnswer, ask_all, resolve
from failover.lb.dnsnames import record_name, split_addresses, zone_name
from failover.lb.errors import (
    LoadBalancerError,
    LoadBalancerNotFound,
    LoadBalancerRejected,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
    check_lease,
    local_failure,
)
from failover.lb.retry import RetryPolicy, call_with_retries
from nodevigil.core.authority import Authority

# The zone with its records; a big zone is a few MiB. An answer past this is not PowerDNS's.
MAX_ANSWER = 64 * 2**20


class _ServerError(LoadBalancerUnavailable):
    """A 5xx answer: PowerDNS' backend may recover, so it is retried like a refusal."""


class PowerDnsLoadBalancer:
    """Publishes a service's addresses as A/AAAA rrsets through the PowerDNS HTTP API."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        zone: str,
        api_key: str,
        server_id: str = "localhost",
        ttl: int = 30,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        authority: Authority | None = None,
        proof_servers: Sequence[tuple[str, int]] = (),
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 <= ttl <= 86400:
            raise ValueError("ttl must be within 0..86400")
        if not api_key:
            raise ValueError("api_key must not be empty")
        self._name = name
        self._zone = zone_name(zone)
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._api_key = api_key
        self._authority = authority
        # The servers a traffic proof asks; empty: the zone's NS set (see ``published``).
        self._proof_servers = [NameServer("", h, p) for h, p in proof_servers]
        zone_id = quote(self._zone.to_text(), safe=".")
        self._zone_url = (
            f"{url.rstrip('/')}/api/v1/servers/{quote(server_id, safe='')}/zones/{zone_id}"
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        """The load balancer's name from the configuration."""
        return self._name

    async def addresses(self, record: str) -> set[str]:
        """Read back the A and AAAA records of ``record`` from the zone."""
        fqdn = record_name(record, self._zone).to_text()
        params = {"rrset_name": fqdn}  # honoured by newer PowerDNS; older ones return all
        zone = await call_with_retries(
            lambda: self._request("GET", self._zone_url, params=params), self._retry
        )
        found: set[str] = set()
        rrsets: list[dict[str, Any]] = zone.get("rrsets", []) if isinstance(zone, dict) else []
        for rrset in rrsets:
            if rrset.get("name") != fqdn or rrset.get("type") not in ("A", "AAAA"):
                continue
            for item in rrset.get("records", []):
                if not item.get("disabled", False):
                    found.add(str(item["content"]))
        return found

    @property
    def ttl(self) -> int:
        """The TTL the rrsets are given (how long clients may keep an old answer)."""
        return self._ttl

    async def published(self, record: str) -> list[ServerAnswer]:
        """What every authoritative server answers for ``record`` (SOA serial, addresses):
        the ``proof_servers``, else the zone's NS set as the API holds it, each NS name
        resolved by the system resolver and asked on port 53."""
        servers = self._proof_servers or await self._name_servers()
        fqdn = record_name(record, self._zone)
        return await ask_all(servers, self._zone, fqdn, self._timeout)

    async def _name_servers(self) -> list[NameServer]:
        apex = self._zone.to_text()
        params = {"rrset_name": apex, "rrset_type": "NS"}
        zone = await call_with_retries(
            lambda: self._request("GET", self._zone_url, params=params), self._retry
        )
        rrsets: list[dict[str, Any]] = zone.get("rrsets", []) if isinstance(zone, dict) else []
        names = sorted(
            str(item["content"])
            for rrset in rrsets
            if rrset.get("name") == apex and rrset.get("type") == "NS"
            for item in rrset.get("records", [])
            if not item.get("disabled", False)
        )
        if not names:
            raise LoadBalancerRejected(f"{self._name}: the zone {apex} has no NS set", code="NS")
        servers = []
        for name in names:
            addresses = await resolve(name)
            if not addresses:
                raise LoadBalancerRejected(
                    f"{self._name}: NS {name} of {apex} has no address (set proof_servers)",
                    code="NS",
                )
            servers.append(NameServer(name, addresses[0]))
        return servers

    async def set_addresses(self, record: str, addresses: set[str]) -> None:
        """Replace the record's A and AAAA rrsets in one PATCH (one transaction in PowerDNS)."""
        fqdn = record_name(record, self._zone).to_text()
        v4, v6 = split_addresses(addresses)
        rrsets = [self._rrset(fqdn, "A", v4), self._rrset(fqdn, "AAAA", v6)]

        async def fenced_once() -> Any:
            check_lease(self._authority, self._name, f"PATCH {fqdn}", needs=self._timeout)
            return await self._request("PATCH", self._zone_url, body={"rrsets": rrsets})

        await call_with_retries(fenced_once, self._retry)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _rrset(self, fqdn: str, rdtype: str, contents: list[str]) -> dict[str, Any]:
        if not contents:
            return {"name": fqdn, "type": rdtype, "changetype": "DELETE"}
        return {
            "name": fqdn,
            "type": rdtype,
            "ttl": self._ttl,
            "changetype": "REPLACE",
            "records": [{"content": content, "disabled": False} for content in contents],
        }

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop that will also close it.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"X-API-Key": self._api_key, "Accept": "application/json"},
            )
        return self._session

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        try:
            async with self._http().request(method, url, params=params, json=body) as response:
                raw = await _read_bounded(response)
                status = response.status
        except TimeoutError as exc:
            raise LoadBalancerTimeout(
                f"{self._name}: PowerDNS API {method} did not answer in {self._timeout:g}s"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            local = local_failure(exc, self._name, "the PowerDNS API")
            if local is not None:
                raise local from exc
            raise LoadBalancerUnavailable(f"{self._name}: PowerDNS API {method}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise LoadBalancerError(f"{self._name}: PowerDNS API {method}: {exc}") from exc
        if len(raw) > MAX_ANSWER:
            raise LoadBalancerError(
                f"{self._name}: PowerDNS API {method} answered more than "
                f"{MAX_ANSWER // 2**20} MiB; not read"
            )
        text = raw.decode("utf-8", "replace")
        if status < 300:
            try:
                return json.loads(text) if text.strip() else None
            except ValueError:
                raise LoadBalancerError(
                    f"{self._name}: PowerDNS API {method} answered {status} with a body that "
                    "is not JSON"
                ) from None
        detail = _api_error(text)
        message = (
            f"{self._name}: PowerDNS API {method} zone {self._zone} answered {status}: {detail}"
        )
        if status >= 500:
            raise _ServerError(message)
        if status == 404:
            raise LoadBalancerNotFound(message)
        raise LoadBalancerRejected(message, code=str(status))


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, or its first MAX_ANSWER + 1 bytes when it is longer."""
    raw = bytearray()
    async for chunk in response.content.iter_chunked(256 * 1024):
        raw += chunk
        if len(raw) > MAX_ANSWER:
            break
    return bytes(raw)


def _api_error(text: str) -> str:
    """The API's JSON ``error`` field, or the start of the body when it is not JSON."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:200] or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return text.strip()[:200]
