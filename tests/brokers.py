"""A real Mosquitto broker on loopback, on an ephemeral port, in a temporary directory."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.failover.daemons import Daemon, DaemonError, free_port, poll_until

MOSQUITTO = Path(shutil.which("mosquitto") or "/usr/sbin/mosquitto")


@dataclass
class Broker:
    """A running Mosquitto; ``restart()`` keeps the port, as a real broker restart does."""

    workdir: Path
    port: int
    daemon: Daemon | None = None

    @property
    def url(self) -> str:
        """The broker's mqtt:// URL."""
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_type error\nlog_type warning\n"
        )
        log_path = self.workdir / "mosquitto.log"
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                str(MOSQUITTO),
                "-c",
                str(conf),
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        self.daemon = Daemon("mosquitto", process, log_path)

        async def accepting() -> bool:
            assert self.daemon is not None
            if not self.daemon.running:
                raise DaemonError(f"mosquitto exited:\n{self.daemon.log_tail()}")
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
async def run_mosquitto(workdir: Path) -> AsyncIterator[Broker]:
    """Start a broker for the duration of the block."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir, free_port())
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
