"""What the demo shows: plain timestamped lines (the live table is ``live``, which needs rich)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from failover.events import ControllerDecision, FailoverFailed, IncidentEvent, NotificationDead
from monitor.verdicts import NodeDown, NodeUp
from nodevigil.app.demo.world import World
from nodevigil.core.events import Event

# How to get the live view when rich is missing (it is the ``demo`` extra, not a dependency).
INSTALL_RICH = (
    "the live view needs the Python package rich, which is not installed: "
    "pip install 'nodevigil[demo]' (scripts/setup.sh installs it); showing plain lines"
)


def describe(event: Event) -> str | None:
    """One line for an event worth showing, None for the rest."""
    match event:
        case ControllerDecision():
            return f"decision: {event.decision}"
        case NodeDown():
            return f"node.down {event.subject}: {event.reason}"
        case NodeUp():
            return f"node.up {event.subject}"
        case IncidentEvent():
            return f"{event.kind} #{event.incident} service {event.subject}"
        case FailoverFailed():
            return f"{event.kind} {event.subject}: {event.error}"
        case NotificationDead():
            return f"{event.kind} {event.subject}: "
    return None


class Narrator:
    """Prints the story as plain timestamped lines (for logs, CI and ``--no-live``)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.started = time.monotonic()

    def elapsed(self) -> str:
        """Seconds since the demo started, as the line prefix shows them."""
        return f"[{time.monotonic() - self.started:6.1f}s]"

    def say(self, text: str) -> None:
        """One line of the story."""
        print(f"{self.elapsed()} {text}", file=self.out, flush=True)

    def step(self, number: int, total: int, title: str) -> None:
        """The heading of a story step."""
        print(f"\n{self.elapsed()} == {number}/{total} {title} ==", file=self.out, flush=True)

    def event(self, text: str) -> None:
        """An event from nodevigil (a decision, a verdict, an incident)."""
        print(f"{self.elapsed()}     {text}", file=self.out, flush=True)

    def block(self, text: str) -> None:
        """Several lines printed as they are (the credit table, the URLs)."""
        print(text.rstrip("\n"), file=self.out, flush=True)

    async def __aenter__(self) -> Narrator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def narrator_for(world: World, live: bool, plain: Narrator) -> Narrator:
    """The live table when asked for and rich is installed; else ``plain``, which says how to
    install rich when the live view was asked for."""
    if not live:
        return plain
    try:
        from nodevigil.app.demo.live import LiveNarrator
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "rich":
            raise
        plain.say(INSTALL_RICH)
        return plain
    return LiveNarrator(world)
