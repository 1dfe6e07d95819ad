"""A real BIND (``named -g``) serving one zone, updatable with a TSIG key."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype

from nodevigil.app.demo.servers.process import (
    Program,
    ProgramError,
    free_port,
    free_udp_tcp_port,
    spawn,
    start_with_retries,
    wait_ready,
)

NAMED = Path("/usr/sbin/named")
RNDC = Path("/usr/sbin/rndc")
ZONE = "example.test."


@dataclass
class BindInstance:
    """A running ``named`` serving ``zone``, updatable with the TSIG key in ``key_file``."""

    daemon: Program
    port: int
    zone: str
    key_name: str
    key_algorithm: str
    key_file: Path
    directory: Path
    rndc_conf: Path | None = None  # set when started with control=True

    @property
    def server(self) -> str:
        """``host:port`` as the rfc2136 configuration writes it."""
        return f"127.0.0.1:{self.port}"

    async def rndc(self, *args: str) -> str:
        """Run ``rndc ARGS`` against this server (``freeze``, ``thaw``, ``reconfig``, ...)."""
        if self.rndc_conf is None:
            raise ProgramError("BIND was started without a control channel (control=True)")
        proc = await asyncio.create_subprocess_exec(
            str(RNDC),
            "-c",
            str(self.rndc_conf),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise ProgramError(f"rndc {' '.join(args)} failed ({proc.returncode}): {text}")
        return text


def tsig_secret() -> str:
    """A random base64 TSIG secret (32 bytes, as tsig-keygen makes for hmac-sha256)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


async def dns_query(
    name: str, rdtype: str, port: int, *, host: str = "127.0.0.1", limit: float = 1.0
) -> dns.message.Message:
    """One real DNS query over UDP (TCP when truncated), bounded by ``limit`` seconds."""
    query = dns.message.make_query(name, rdtype)
    response, _ = await dns.asyncquery.udp_with_fallback(query, host, timeout=limit, port=port)
    return response


async def addresses_of(name: str, port: int, *, limit: float = 1.0) -> set[str]:
    """The A records the server at ``127.0.0.1:port`` answers for ``name`` (empty if none)."""
    answer = await dns_query(name, "A", port, limit=limit)
    return {
        item.to_text()
        for rrset in answer.answer
        if rrset.rdtype == dns.rdatatype.A
        for item in rrset
    }


def _prepare_bind(workdir: Path, zone: str, secret: str, key_file: Path, zone_file: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(secret + "\n")
    key_file.chmod(0o600)
    zone_file.write_text(
        f"$TTL 60\n@ IN SOA ns1.{zone} hostmaster.{zone} 1 3600 600 86400 60\n"
        f"@ IN NS ns1.{zone}\nns1 IN A 127.0.0.1\n"
    )


@contextlib.asynccontextmanager
async def run_bind(
    workdir: Path,
    *,
    key_name: str = "nodevigil",
    algorithm: str = "hmac-sha256",
    zone: str = ZONE,
    program: Path = NAMED,
    control: bool = False,
) -> AsyncIterator[BindInstance]:
    """Start ``named -g`` for ``zone`` with dynamic updates allowed for one TSIG key.

    ``control=True`` adds an rndc control channel on loopback (see ``BindInstance.rndc``).
    """
    zone = zone if zone.endswith(".") else zone + "."
    secret = tsig_secret()
    key_file = workdir / "tsig.key"
    bare = zone.rstrip(".")
    zone_file = workdir / f"{bare}.db"
    await asyncio.to_thread(_prepare_bind, workdir, zone, secret, key_file, zone_file)
    conf = workdir / "named.conf"
    rndc_conf = workdir / "rndc.conf" if control else None
    rndc_secret = tsig_secret()

    async def start() -> BindInstance:
        port = free_udp_tcp_port()
        controls = "controls { };"
        rndc_port = free_port() if rndc_conf is not None else 0
        if rndc_conf is not None:
            rndc_key = f'key "rndc-key" {{ algorithm hmac-sha256; secret "{rndc_secret}"; }};'
            controls = (
                f"{rndc_key}\ncontrols {{ inet 127.0.0.1 port {rndc_port} "
                'allow { 127.0.0.1; } keys { "rndc-key"; }; };'
            )
            await asyncio.to_thread(
                rndc_conf.write_text,
                f'{rndc_key}\noptions {{ default-key "rndc-key"; '
                f"default-server 127.0.0.1; default-port {rndc_port}; }};\n",
            )
        text = f"""options {{
    directory "{workdir}";
    pid-file "{workdir}/named.pid";
    session-keyfile "{workdir}/session.key";
    managed-keys-directory "{workdir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ any; }};
}};
{controls}
key "{key_name}" {{ algorithm {algorithm}; secret "{secret}"; }};
zone "{bare}" {{
    type primary;
    file "{zone_file}";
    allow-update {{ key "{key_name}"; }};
}};
"""
        await asyncio.to_thread(conf.write_text, text)
        daemon = await spawn(
            "named",
            [str(program), "-g", "-n", "1", "-c", str(conf)],
            workdir / "named.log",
            workdir,
        )

        async def ready() -> bool:
            answer = await dns_query(zone, "SOA", port, limit=0.3)
            if rndc_conf is not None:  # the control channel listens too
                _, writer = await asyncio.open_connection("127.0.0.1", rndc_port)
                writer.close()
            return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)

        await wait_ready(daemon, ready)
        return BindInstance(daemon, port, zone, key_name, algorithm, key_file, workdir, rndc_conf)

    instance = await start_with_retries(start)
    try:
        yield instance
    finally:
        await instance.daemon.stop()
