"""Which event loop nodevigil runs on: asyncio's own, or uvloop's when it is installed.

uvloop runs the same asyncio code on libuv; the probe engine spends about a quarter less CPU per
probe on it (bench/README.md, "Start-up and event loop"), so it is used when installed unless
the operator says otherwise: ``NODEVIGIL_LOOP=asyncio`` (or ``nodevigil run --loop asyncio``)
turns it off, ``NODEVIGIL_LOOP=uvloop`` requires it. In the kernel so that every process of
nodevigil (the daemon, probing workers) makes the same choice from the same environment.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Mapping

from nodevigil.core.errors import NodevigilError

LOOPS = frozenset({"asyncio", "uvloop"})
ENV = "NODEVIGIL_LOOP"
AUTO = "auto"


class LoopChoiceError(NodevigilError, ValueError):
    """The event loop asked for is unknown or not installed."""


def uvloop_installed() -> bool:
    """Whether uvloop can be imported (without importing it)."""
    return importlib.util.find_spec("uvloop") is not None


def choose_loop(asked: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The loop to run: ``asked`` (the command line), else ``$NODEVIGIL_LOOP``, else auto
    (uvloop when installed); raise LoopChoiceError for an unknown or missing loop."""
    env = os.environ if environ is None else environ
    choice = (asked or env.get(ENV) or AUTO).strip().lower()
    if choice == AUTO:
        return "uvloop" if uvloop_installed() else "asyncio"
    if choice not in LOOPS:
        raise LoopChoiceError(
            f"{ENV}: unknown event loop {choice!r} (one of: {AUTO}, {', '.join(sorted(LOOPS))})"
        )
    if choice == "uvloop" and not uvloop_installed():
        raise LoopChoiceError(
            f"{ENV}: uvloop is not installed (pip install 'nodevigil[fast]', or choose asyncio)"
        )
    return choice


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``asyncio.run(..., loop_factory=...)`` takes for ``name``; None is asyncio's own."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise LoopChoiceError(f"unknown event loop {name!r}")
