"""A real Mosquitto broker on loopback, on an ephemeral port, in its own directory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nodevigil.app.demo.servers.process import (
    Program,
    ProgramError,
    free_port,
    locate,
    poll_until,
    spawn,
)

MOSQUITTO = Path("/usr/sbin/mosquitto")


DAEMON_USER = "nodevigil"  # the daemon's broker login in the demo and the tests

# Node agents write only below their own name; the daemon (and nobody else) reads them all.
# %u is the MQTT username, so each node's username must be its agent name.
AGENT_ACL = """\
# Written for nodevigil: each node agent writes only its own topics.
pattern write {prefix}/nodes/%u/heartbeat
pattern write {prefix}/nodes/%u/status
user {daemon}
topic read {prefix}/nodes/#
"""


@dataclass(frozen=True)
class BrokerTls:
    """The files of the broker's TLS listener (PEM)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass
class Broker:
    """A running Mosquitto; ``restart()`` keeps the ports, as a real broker restart does.

    With ``users`` (login -> password) anonymous clients are refused and a password file is
    made with ``mosquitto_passwd``; ``acl`` is the ACL file's text; with ``tls`` a second
    listener on ``tls_port`` speaks TLS only.
    """

    workdir: Path
    port: int
    daemon: Program | None = None
    program: Path = MOSQUITTO
    users: dict[str, str] | None = None
    acl: str | None = None
    tls: BrokerTls | None = None
    tls_port: int | None = None

    @property
    def url(self) -> str:
        """The broker's mqtt:// URL."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        """The broker's mqtts:// URL (with ``tls``)."""
        assert self.tls_port is not None, "the broker has no TLS listener"
        return f"mqtts://localhost:{self.tls_port}"

    def _config(self) -> str:
        lines = ["per_listener_settings false", "persistence false"]
        lines += ["log_type error", "log_type warning", "user root"]
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self.workdir / 'passwd'}"]
        if self.acl is not None:
            lines.append(f"acl_file {self.workdir / 'acl'}")
        lines.append(f"listener {self.port} 127.0.0.1")
        if self.tls is not None:
            assert self.tls_port is not None
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
            ]
        return "\n".join(lines) + "\n"

    async def _write_files(self) -> None:
        if self.users is not None:
            passwd = self.workdir / "passwd"
            tool = self.program.with_name("mosquitto_passwd")
            if not tool.exists():
                tool = locate("mosquitto_passwd") or Path("/usr/bin/mosquitto_passwd")
            await asyncio.to_thread(passwd.write_text, "")
            for user, password in self.users.items():
                process = await asyncio.create_subprocess_exec(
                    str(tool),
                    "-b",
                    str(passwd),
                    user,
                    password,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                _, err = await process.communicate()
                if process.returncode != 0:
                    raise ProgramError(f"mosquitto_passwd failed: {err.decode(errors='replace')}")
        if self.acl is not None:
            await asyncio.to_thread((self.workdir / "acl").write_text, self.acl)

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        conf = self.workdir / "mosquitto.conf"
        await self._write_files()
        await asyncio.to_thread(conf.write_text, self._config())
        daemon = await spawn(
            "mosquitto",
            [str(self.program), "-c", str(conf)],
            self.workdir / "mosquitto.log",
            self.workdir,
        )
        self.daemon = daemon

        async def accepting() -> bool:
            if not daemon.running:
                tail = await asyncio.to_thread(daemon.log_tail)
                raise ProgramError(f"mosquitto exited:\n{tail}")
            for port in (self.port, self.tls_port):
                if port is None:
                    continue
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    return False
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            return True

        await poll_until(accepting, within=10, what="mosquitto accepting")

    async def stop(self) -> None:
        """Stop the broker."""
        if self.daemon is not None:
            await self.daemon.stop()

    async def restart(self) -> None:
        """Stop and start again on the same ports."""
        await self.stop()
        await self.start()


@contextlib.asynccontextmanager
async def run_mosquitto(
    workdir: Path,
    *,
    program: Path = MOSQUITTO,
    users: dict[str, str] | None = None,
    acl: str | None = None,
    tls: BrokerTls | None = None,
) -> AsyncIterator[Broker]:
    """Start a broker for the duration of the block."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    broker = Broker(
        workdir,
        free_port(),
        program=program,
        users=users,
        acl=acl,
        tls=tls,
        tls_port=free_port() if tls is not None else None,
    )
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()
