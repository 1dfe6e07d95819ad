"""DNS dynamic updates (RFC 2136) signed with TSIG, e.g. towards BIND, as a global LB.

Fencing (a cluster: ``authority`` with an epoch). Every update carries an RFC 2136 prerequisite
"RRset exists (value dependent)" on the fence record ``_nodevigil-fence.<zone>`` TXT holding
this leader's epoch, so the DNS server itself refuses (NXRRSET) a deposed leader's update once
a newer leader has moved the fence. A leader moves the fence once per epoch, forwards only:
it reads the record, then sends an update whose prerequisite is exactly what it read (or the
record's absence) and which replaces it with its own epoch; it never moves it back. This
happens before its first update and on its first read-back, so a new leader fences the old one
within a cycle even when it has nothing to change. A refusal is ``LoadBalancerFenced``, logged
once per epoch and never retried. Without an authority, or on a single host (no epoch), the
messages are exactly those sent without fencing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from failover.lb.authoritative import NameServer, ServerAnswer, ask_all, name_servers
from failover.lb.dnsnames import record_name, split_addresses, zone_name
from failover.lb.errors import (
    LoadBalancerError,
    LoadBalancerFenced,
    LoadBalancerRejected,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
    local_failure,
)
from failover.lb.retry import RetryPolicy, call_with_retries
from nodevigil.core.authority import Authority, refusal

log = logging.getLogger(__name__)

FENCE_LABEL = "_nodevigil-fence"  # the fence record's name, relative to the zone
# What a DNS server answers when an update's prerequisite does not hold (RFC 2136 3.2).
_PREREQUISITE_FAILED = frozenset(
    {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN}
)
_ADVANCE_TRIES = 3  # another host moving the fence meanwhile: read it again, this often

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
        authority: Authority | None = None,
        proof_servers: Sequence[tuple[str, int]] = (),
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
        self._authority = authority
        # The servers a traffic proof asks; empty: the zone's NS set (see ``published``).
        self._proof_servers = [NameServer("", h, p) for h, p in proof_servers]
        self._fence = dns.name.from_text(FENCE_LABEL, origin=self._zone)
        self._fenced_at: int | None = None  # the epoch this adapter put (or found) in the fence
        self._refusal_logged: int | None = None  # the epoch whose refusal was logged
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

    @property
    def fence_name(self) -> dns.name.Name:
        """The fence record's absolute name (``_nodevigil-fence.<zone>``)."""
        return self._fence

    async def addresses(self, record: str) -> set[str]:
        """Read back the A and AAAA addresses of ``record`` with plain queries to the server.

        A leader whose epoch has not moved the fence yet moves it first (module docs)."""
        await self._advance_quietly()
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
        """Replace the record's A and AAAA sets in one signed update message; in a cluster,
        only while this leader's epoch holds the fence (LoadBalancerFenced otherwise)."""
        fqdn = record_name(record, self._zone)
        v4, v6 = split_addresses(addresses)
        epoch = self._epoch(f"update {fqdn}")
        if epoch is not None and self._fenced_at != epoch:
            await self.advance_fence()
        update = self._update()
        if epoch is not None:
            update.present(self._fence, self._fence_rdata(epoch))
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
        rcode = response.rcode()
        if epoch is not None and rcode in _PREREQUISITE_FAILED:
            self._fenced_at = None
            raise await self._refused(epoch, f"update {fqdn}", rcode)
        self._raise_for_rcode(rcode, f"update {fqdn}", _UPDATE_HINTS)

    @property
    def ttl(self) -> int:
        """The TTL the updates give the records (how long clients may keep an old answer)."""
        return self._ttl

    async def published(self, record: str) -> list[ServerAnswer]:
        """What every authoritative server of the zone (the NS set as the primary answers it)
        answers for ``record``: its SOA serial and the record's addresses, or its error.
        With ``proof_servers``, those servers are asked instead of the NS set."""
        try:
            servers = self._proof_servers or await name_servers(
                self._zone, self._host, self._port, self._timeout
            )
        except LoadBalancerRejected as exc:
            raise LoadBalancerRejected(f"{self._name}: {exc}", code=exc.code) from exc
        except LoadBalancerError as exc:
            raise type(exc)(f"{self._name}: {exc}") from exc
        fqdn = record_name(record, self._zone)
        return await ask_all(servers, self._zone, fqdn, self._timeout)

    async def fence_epoch(self) -> int | None:
        """The epoch the fence record holds now (None: no fence yet)."""
        held, _ = await self._read_fence()
        return held

    async def advance_fence(self) -> int | None:
        """Move the fence to this leader's epoch unless it holds a newer one (then
        LoadBalancerFenced); the epoch it holds afterwards, None when nothing is fenced."""
        epoch = self._epoch("advance the fence")
        if epoch is None:
            return None
        for _ in range(_ADVANCE_TRIES):
            held, rdatas = await self._read_fence()
            if held is not None and held > epoch:
                raise await self._refused(epoch, "advance the fence", None, held=held)
            if held == epoch:
                self._fenced_at = epoch
                return epoch
            update = self._update()
            # Exactly what was read, or its absence: two leaders moving it at once cannot both
            # succeed, and neither can move it back.
            if rdatas:
                update.present(self._fence, *rdatas)
            else:
                update.absent(self._fence, dns.rdatatype.TXT)
            update.replace(self._fence, 0, self._fence_rdata(epoch))
            response = await call_with_retries(
                functools.partial(self._send, update, tcp=True), self._retry
            )
            rcode = response.rcode()
            if rcode in _PREREQUISITE_FAILED:
                continue  # moved meanwhile (or our own retried update landed): read it again
            self._raise_for_rcode(rcode, f"advance the fence {self._fence}", _UPDATE_HINTS)
            log.info("%s: fence %s moved from %s to epoch %d", self._name, self._fence, held, epoch)
            self._fenced_at = epoch
            return epoch
        raise LoadBalancerRejected(
            f"{self._name}: the fence {self._fence} at {self.endpoint} kept changing while "
            f"epoch {epoch} tried to move it; not updating",
            code="fence",
        )

    async def close(self) -> None:
        """Nothing is held open between calls."""

    # --- fencing ---------------------------------------------------------------------------

    def _epoch(self, what: str) -> int | None:
        """This leader's epoch; None when nothing is fenced; LoadBalancerFenced when in a
        cluster without the lease (nothing is sent)."""
        authority = self._authority
        if authority is None:
            return None
        epoch = authority.epoch
        if epoch is None and not authority.may_act():
            raise LoadBalancerFenced(f"{self._name}: not sending ({what}): {refusal(authority)}")
        return epoch

    async def _advance_quietly(self) -> None:
        """Move the fence on a new leader's first read-back; trouble is left to the update."""
        authority = self._authority
        epoch = None if authority is None else authority.epoch
        if epoch is None or self._fenced_at == epoch:
            return
        try:
            await self.advance_fence()
        except LoadBalancerFenced:
            pass  # logged once by _refused; reading goes on
        except LoadBalancerError as exc:
            log.debug("%s: fence not moved yet: %s", self._name, exc)

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            self._zone, keyring=self._keyring, keyname=self._keyname, keyalgorithm=self._algorithm
        )

    @staticmethod
    def _fence_rdata(epoch: int) -> dns.rdata.Rdata:
        return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, f'"{epoch}"')

    async def _read_fence(self) -> tuple[int | None, list[dns.rdata.Rdata]]:
        """The fence's epoch (the highest number it holds) and its rdatas as read."""
        query = dns.message.make_query(self._fence, dns.rdatatype.TXT)
        response = await call_with_retries(
            functools.partial(self._send, query, tcp=True), self._retry
        )
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return None, []
        self._raise_for_rcode(rcode, f"query {self._fence} TXT")
        rrset = response.get_rrset(
            response.answer, self._fence, dns.rdataclass.IN, dns.rdatatype.TXT
        )
        rdatas = [] if rrset is None else list(rrset)
        epochs = []
        for rdata in rdatas:
            text = b"".join(rdata.strings).decode("ascii", "replace")
            if not text.isdigit():
                raise LoadBalancerRejected(
                    f"{self._name}: the fence {self._fence} holds {text!r}, not an epoch; "
                    "fix or delete the record",
                    code="fence",
                )
            epochs.append(int(text))
        return (max(epochs) if epochs else None), rdatas

    async def _refused(
        self, epoch: int, what: str, rcode: dns.rcode.Rcode | None, *, held: int | None = None
    ) -> LoadBalancerFenced:
        """The error for a refusal by the fence, logged once per epoch."""
        if held is None:
            try:
                held = await self.fence_epoch()
            except LoadBalancerError:
                held = None  # only for the message
        code = "fenced" if rcode is None else dns.rcode.to_text(rcode)
        now = f"epoch {held}" if held is not None else "another epoch"
        error = LoadBalancerFenced(
            f"{self._name}: {what} refused at {self.endpoint} ({code}): the fence "
            f"{self._fence} holds {now}, this process leads under epoch {epoch} no longer",
            code=code,
            epoch=epoch,
        )
        if self._refusal_logged != epoch:
            self._refusal_logged = epoch
            log.warning("%s", error)
        return error

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
