"""A real BIND primary with a real BIND secondary (zone transfer after NOTIFY), for the DNS
traffic proofs. Both listen on 127.0.0.1, on two ports (BIND listens only on an interface's
addresses, and this host's loopback has only 127.0.0.1), so the proof is given the two as
``proof_servers``; the secondary can be paused (SIGSTOP) to make it lag."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dns.rcode

from tests.failover.daemons import NAMED, Daemon, dns_query, free_udp_tcp_port, tsig_secret
from tests.failover.daemons.process import PortTaken, spawn, start_with_retries, wait_ready

ZONE = "example.test."
HOST = "127.0.0.1"
KEY = "nodevigil"


@dataclass
class ZonePair:
    """The running primary and secondary of ``example.test.`` and the update key."""

    primary: Daemon
    secondary: Daemon
    port: int  # the primary's
    secondary_port: int
    key_secret: str
    directory: Path

    def pause_secondary(self) -> None:
        """Stop the secondary (SIGSTOP): it answers nothing and transfers nothing."""
        os.kill(self.secondary.process.pid, signal.SIGSTOP)

    def resume_secondary(self) -> None:
        """Let the secondary run again: it reads the NOTIFY queued meanwhile."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.secondary.process.pid, signal.SIGCONT)


def _zone_text() -> str:
    return (
        f"$TTL 60\n@ IN SOA ns1.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 60\n"
        f"@ IN NS ns1.{ZONE}\n@ IN NS ns2.{ZONE}\n"
        f"ns1 IN A {HOST}\nns2 IN A {HOST}\n"
        "www 30 IN A 192.0.2.1\nwww 30 IN A 192.0.2.2\n"
    )


def _options(workdir: Path, port: int, extra: str) -> str:
    return f"""options {{
    directory "{workdir}";
    pid-file "{workdir}/named.pid";
    session-keyfile "{workdir}/session.key";
    managed-keys-directory "{workdir}";
    listen-on port {port} {{ {HOST}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
    {extra}
}};
controls {{ }};
"""


async def _start(base: Path, secret: str) -> ZonePair:
    port, secondary_port = free_udp_tcp_port(HOST), free_udp_tcp_port(HOST)
    if port == secondary_port:
        raise PortTaken(f"port {port} drawn twice")
    bare = ZONE.rstrip(".")
    primary_dir, secondary_dir = base / "primary", base / "secondary"
    for d in (primary_dir, secondary_dir):
        await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread((primary_dir / f"{bare}.db").write_text, _zone_text())
    # NOTIFY at once (notify-delay 0) to the secondary's port, not to port 53 of the NS set.
    primary_conf = _options(
        primary_dir, port, "notify explicit; notify-delay 0; allow-transfer { any; };"
    ) + (
        f'key "{KEY}" {{ algorithm hmac-sha256; secret "{secret}"; }};\n'
        f'zone "{bare}" {{ type primary; file "{primary_dir}/{bare}.db"; '
        f'allow-update {{ key "{KEY}"; }}; also-notify {{ {HOST} port {secondary_port}; }}; }};\n'
    )
    secondary_conf = _options(secondary_dir, secondary_port, "notify no;") + (
        f'zone "{bare}" {{ type secondary; file "{secondary_dir}/{bare}.db"; '
        f"primaries {{ {HOST} port {port}; }}; }};\n"
    )
    await asyncio.to_thread((primary_dir / "named.conf").write_text, primary_conf)
    await asyncio.to_thread((secondary_dir / "named.conf").write_text, secondary_conf)

    async def run(name: str, workdir: Path, port: int) -> Daemon:
        conf = str(workdir / "named.conf")
        daemon = await spawn(
            name, [str(NAMED), "-g", "-n", "1", "-c", conf], workdir / "named.log", workdir
        )

        async def ready() -> bool:
            answer = await dns_query(ZONE, "SOA", port, limit=0.3)
            return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)

        await wait_ready(daemon, ready)  # the secondary: once its first transfer is done
        return daemon

    primary = await run("named primary", primary_dir, port)
    try:
        secondary = await run("named secondary", secondary_dir, secondary_port)
    except BaseException:
        await primary.stop()
        raise
    return ZonePair(primary, secondary, port, secondary_port, secret, base)


@contextlib.asynccontextmanager
async def run_zone_pair(base: Path) -> AsyncIterator[ZonePair]:
    """Start the primary, then the secondary, which transfers the zone from it."""
    secret = tsig_secret()
    pair = await start_with_retries(lambda: _start(base, secret))
    try:
        yield pair
    finally:
        pair.resume_secondary()  # a stopped process would not hear SIGTERM
        await pair.secondary.stop()
        await pair.primary.stop()
