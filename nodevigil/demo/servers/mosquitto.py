"""A real Mosquitto broker on loopback, on an ephemeral port, in its own directory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nodevigil.demo.servers.process import Program, ProgramError, free_port, poll_until, spawn

MOSQUITTO = Path("/usr/sbin/mosquitto")


@dataclass
class Broker:
    """A running Mosquitto; ``restart()`` keeps the port, as a real broker restart does."""

    workdir: Path
    port: int
    daemon: Program | None = None
    program: Path = MOSQUITTO

    @property
    def url(self) -> str:
        """The broker's mqtt:// URL."""
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        conf = self.workdir / "mosquitto.conf"
        await asyncio.to_thread(
            conf.write_text,
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_type error\nlog_type warning\n",
        )
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
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
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
        """Stop and start again on the same port."""
        await self.stop()
        await self.start()


@contextlib.asynccontextmanager
async def run_mosquitto(workdir: Path, *, program: Path = MOSQUITTO) -> AsyncIterator[Broker]:
    """Start a broker for the duration of the block."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    broker = Broker(workdir, free_port(), program=program)
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()
