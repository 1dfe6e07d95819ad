"""DNS dynamic updates (RFC 2136) signed with TSIG, e.g. towards BIND, as a global LB."""

from __future__ import annotations

import functools

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from failover.lb.dnsnames import record_name, split_addresses, zone_name
from failover.lb.errors import (
    LoadBalancerError,
    LoadBalancerRejected,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
    local_failure,
)
from failover.lb.retry import RetryPolicy, call_with_retries

# The config writes BIND's short names; dnspython knows hmac-md5 only by its long name.
_ALGORITHM_NAMES = {"hmac-md5": "hmac-md5.sig-alg.reg.int"}

# dnspython raises these when the server's answer carries a TSIG error.
_TSIG_ERRORS: dict[type[Exception], str] = {
    dns.tsig.PeerBadKey: "BADKEY",
    dns.tsig.PeerBadSignature: "BADSIG",
    dns.tsig.PeerBadTime: "BADTIME",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
}
_TSIG_HINTS = {
    "BADKEY": "the server does not know this key name and algorithm",
    "BADSIG": "the secret does not match the server's",
    "BADTIME": "this host's clock and the server's differ too much",
    "BADTRUNC": "the server refused the truncated signature",
}
# What an update's rcode most often means, for the operator reading the event.
_UPDATE_HINTS = {
    "REFUSED": "the server refused the update (the key may not update this zone, "
    "or the zone is frozen)",
    "NOTAUTH": "the server is not authoritative for the zone or did not accept the key",
    "SERVFAIL": "the server could not apply the update (see its log)",
    "NOTZONE": "the name is outside the zone",
}


class Rfc2136LoadBalancer:
    """Publishes a service's addresses as A/AAAA records through signed dynamic updates."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int = 53,
        zone: str,
        ttl: int = 30,
        timeout: float = 2.0,
        tsig_name: str | None = None,
        tsig_secret: str | None = None,
        tsig_algorithm: str = "hmac-sha256",
        retry: RetryPolicy | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 <= ttl <= 86400:
            raise ValueError("ttl must be within 0..86400")
        if (tsig_name is None) != (tsig_secret is None):
            raise ValueError("give both tsig_name and tsig_secret, or neither")
        self._name = name
        self._host = host
        self._port = port
        self._zone = zone_name(zone)
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._keyring: dict[dns.name.Name, dns.tsig.Key] | None = None
        self._keyname: dns.name.Name | None = None
        tsig_algorithm = _ALGORITHM_NAMES.get(tsig_algorithm.lower(), tsig_algorithm)
        self._algorithm = dns.name.from_text(tsig_algorithm)
        if tsig_name is not None and tsig_secret is not None:
            try:
                self._keyring = dns.tsigkeyring.from_text(
                    {tsig_name: (tsig_algorithm, tsig_secret)}
                )
            except (ValueError, TypeError) as exc:
                # The secret's value is never put into the message.
                raise ValueError(f"TSIG key {tsig_name!r}: secret is not valid base64") from exc
            self._keyname = dns.name.from_text(tsig_name)

    @property
    def name(self) -> str:
        """The load balancer's name from the configuration."""
        return self._name

    @property
    def endpoint(self) -> str:
        """The DNS server the updates go to, for messages."""
        return f"{self._host}:{self._port}"

    async def addresses(self, record: str) -> set[str]:
        """Read back the A and AAAA addresses of ``record`` with plain queries to the server."""
        fqdn = record_name(record, self._zone)
        found: set[str] = set()
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            query = dns.message.make_query(fqdn, rdtype)
            response = await call_with_retries(
                functools.partial(self._send, query, tcp=False), self._retry
            )
            rcode = response.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                return set()
            self._raise_for_rcode(rcode, f"query {fqdn} {dns.rdatatype.to_text(rdtype)}")
            rrset = response.get_rrset(response.answer, fqdn, dns.rdataclass.IN, rdtype)
            if rrset is not None:
                found.update(rdata.to_text() for rdata in rrset)
        return found

    async def set_addresses(self, record: str, addresses: set[str]) -> None:
        """Replace the record's A and AAAA sets in one signed update message."""
        fqdn = record_name(record, self._zone)
        v4, v6 = split_addresses(addresses)
        update = dns.update.UpdateMessage(
            self._zone, keyring=self._keyring, keyname=self._keyname, keyalgorithm=self._algorithm
        )
        # Delete and add in one message: the server applies it atomically, so resolvers
        # never see an empty answer in between.
        update.delete(fqdn, dns.rdatatype.A)
        update.delete(fqdn, dns.rdatatype.AAAA)
        for address in v4:
            update.add(fqdn, self._ttl, dns.rdatatype.A, address)
        for address in v6:
            update.add(fqdn, self._ttl, dns.rdatatype.AAAA, address)
        response = await call_with_retries(
            functools.partial(self._send, update, tcp=True), self._retry
        )
        self._raise_for_rcode(response.rcode(), f"update {fqdn}", _UPDATE_HINTS)

    async def close(self) -> None:
        """Nothing is held open between calls."""

    async def _send(self, message: dns.message.Message, *, tcp: bool) -> dns.message.Message:
        try:
            if tcp:
                return await dns.asyncquery.tcp(
                    message, self._host, timeout=self._timeout, port=self._port
                )
            response, _ = await dns.asyncquery.udp_with_fallback(
                message, self._host, timeout=self._timeout, port=self._port
            )
            return response
        except dns.exception.Timeout as exc:
            raise LoadBalancerTimeout(
                f"{self._name}: DNS server {self.endpoint} did not answer in {self._timeout:g}s"
            ) from exc
        except dns.tsig.PeerError as exc:
            # Name the key and the reason; the secret itself never enters a message.
            code = _TSIG_ERRORS.get(type(exc), "TSIG")
            hint = _TSIG_HINTS.get(code, "the server rejected the signature")
            raise LoadBalancerRejected(
                f"{self._name}: TSIG key {self._key_label} refused by the DNS server "
                f"{self.endpoint} ({code}: {hint})",
                code=code,
            ) from exc
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature) as exc:
            raise LoadBalancerRejected(
                f"{self._name}: answer from {self.endpoint} failed TSIG verification: {exc}",
                code="BADSIG",
            ) from exc
        except ConnectionRefusedError as exc:
            raise LoadBalancerUnavailable(
                f"{self._name}: DNS server {self.endpoint} refused the connection (is it running?)"
            ) from exc
        except OSError as exc:
            local = local_failure(exc, self._name, f"DNS server {self.endpoint}")
            if local is not None:
                raise local from exc
            raise LoadBalancerUnavailable(
                f"{self._name}: DNS server {self.endpoint}: {exc.strerror or exc}"
            ) from exc
        except dns.exception.DNSException as exc:
            raise LoadBalancerError(f"{self._name}: DNS server {self.endpoint}: {exc}") from exc

    @property
    def _key_label(self) -> str:
        return "(none)" if self._keyname is None else repr(self._keyname.to_text(True))

    def _raise_for_rcode(
        self, rcode: dns.rcode.Rcode, what: str, hints: dict[str, str] | None = None
    ) -> None:
        if rcode == dns.rcode.NOERROR:
            return
        code = dns.rcode.to_text(rcode)
        hint = (hints or {}).get(code)
        raise LoadBalancerRejected(
            f"{self._name}: {what} at {self.endpoint} answered {code}"
            + (f": {hint}" if hint else ""),
            code=code,
        )
