"""The nodevigil daemon as a real process (``python -m nodevigil run``), for crash tests."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from nodevigil.app.demo.servers.process import Program, spawn, wait_ready


async def spawn_daemon(
    path: Path,
    log: Path,
    *,
    failpoints: str = "",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> asyncio.subprocess.Process:
    """Start ``nodevigil run -c PATH [ARGS]`` with its output appended to ``log``.

    ``failpoints`` arms ``NODEVIGIL_FAILPOINTS`` (nodevigil/core/failpoints.py); ``env`` adds to the
    environment (libfaketime's variables, say).
    """
    argv = [sys.executable, "-m", "nodevigil", "run", "-c", str(path), *args]
    extra = {"NODEVIGIL_FAILPOINTS": failpoints, **(env or {})}
    return (await spawn("nodevigil", argv, log, path.parent, env=extra)).process


async def wait_daemon_ready(proc: asyncio.subprocess.Process, base: str, log: Path) -> None:
    """Until ``base/readyz`` answers 200; raise with the daemon's log if it exits first."""

    async def ready() -> bool:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(f"{base}/readyz") as response,
        ):
            return response.status == 200

    await wait_ready(Program("nodevigil", proc, log), ready)
