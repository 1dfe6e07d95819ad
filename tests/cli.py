"""Run the ``nodevigil`` command as a real subprocess, as an operator would."""

from __future__ import annotations

import asyncio
import os
import sys


async def run_cli(*args: str, token: str | None = None) -> tuple[int, str]:
    """``nodevigil ARGS`` (with ``NODEVIGIL_TOKEN`` when given); return (exit code, output)."""
    env = dict(os.environ)
    if token is not None:
        env["NODEVIGIL_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodevigil",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()
