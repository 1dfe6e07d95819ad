"""The demo's live view: the story scrolls above a table redrawn in place (needs rich, the
``demo`` extra; ``view.narrator_for`` falls back to plain lines without it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nodevigil.app.demo.settings import RECORD, SITES
from nodevigil.app.demo.view import Narrator
from nodevigil.app.demo.world import World

REFRESH = 0.25  # seconds between redraws of the live view
DECISIONS = 6  # lines of recent decisions the live view keeps
_COLOURS = {"up": "green", "down": "bold red", "unknown": "yellow"}


class LiveNarrator(Narrator):
    """The story scrolls above a table of nodes, sites, services and decisions redrawn in place."""

    def __init__(self, world: World, console: Console | None = None) -> None:
        super().__init__()
        self.world = world
        self.console = console or Console()
        self.decisions: deque[str] = deque(maxlen=DECISIONS)
        self.current = "building the world"
        self.dns: set[str] | None = None
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None

    def say(self, text: str) -> None:
        """A story line, printed above the live table."""
        self.console.print(Text(f"{self.elapsed()} ", style="dim") + Text(text))

    def step(self, number: int, total: int, title: str) -> None:
        """A heading rule; the live table's title follows the step."""
        self.current = f"{number}/{total} {title}"
        self.console.rule(f"{number}/{total} {title}")

    def event(self, text: str) -> None:
        """Kept in the table's list of recent decisions, not scrolled."""
        self.decisions.append(f"{self.elapsed()} {text}")

    def block(self, text: str) -> None:
        """Printed above the live table."""
        self.console.print(text.rstrip("\n"), markup=False, highlight=False)

    async def __aenter__(self) -> LiveNarrator:
        self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
        self._live.start()
        self._task = asyncio.create_task(self._refresh(), name="live-view")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._live is not None:
            await self._read_dns()
            self._live.update(self.render(), refresh=True)
            self._live.stop()

    async def _refresh(self) -> None:
        # Redrawn from the event loop (not rich's thread): the controller's state is not shared
        # across threads.
        assert self._live is not None
        ticks = 0
        while True:
            if ticks % 2 == 0:
                await self._read_dns()
            self._live.update(self.render(), refresh=True)
            ticks += 1
            await asyncio.sleep(REFRESH)

    async def _read_dns(self) -> None:
        try:
            self.dns = await self.world.published()
        except Exception:  # a DNS hiccup must not end the view
            self.dns = None

    def render(self) -> RenderableType:
        """The whole live view, from the controller's current snapshot (about 20 lines)."""
        status = self.world.status()
        title = Text(f"nodevigil demo  {self.elapsed()}  {self.current}", style="bold")
        nodes = _table("node", "site", "verdict", "LB has", "wants", "why")
        sites = _table("site", "address", "can serve", "in DNS", "out", "panic")
        services = _table("service", "state", "DNS answer")
        if status is not None:
            now = time.time()
            for n in status.nodes:
                why = n.why
                if n.hold_down_until is not None and n.hold_down_until > now:
                    why = f"hold-down {n.hold_down_until - now:.1f}s left; {why}"
                nodes.add_row(
                    n.name,
                    n.site,
                    Text(n.verdict, style=_COLOURS.get(n.verdict, "")),
                    n.actual or "?",
                    n.desired_state or "?",
                    why,
                )
            for s in status.sites:
                sites.add_row(
                    s.name,
                    SITES.get(s.name, ""),
                    "yes" if s.can_serve else Text("no", style="bold red"),
                    "yes" if s.serving else Text("no", style="bold red"),
                    str(s.nodes_out),
                    Text("PANIC", style="bold yellow") if s.panic else "",
                )
            for svc in status.services:
                state = (
                    Text("available", style="green")
                    if svc.available
                    else Text("UNAVAILABLE", style="bold red")
                )
                answer = ", ".join(sorted(self.dns)) if self.dns is not None else "?"
                services.add_row(svc.name, state, f"{RECORD} {answer}")
        side_by_side = Table.grid(padding=(0, 4))
        side_by_side.add_row(sites, services)
        decisions = [Text(line, no_wrap=True, overflow="ellipsis") for line in self.decisions] or [
            Text("(none yet)", style="dim")
        ]
        return Group(
            title,
            nodes,
            side_by_side,
            Text("last decisions and events", style="bold"),
            *decisions,
        )


def _table(*columns: str) -> Table:
    """Compact columns; only the last one (the longest text) gives way on a narrow terminal."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns[:-1]:
        table.add_column(column, no_wrap=True, min_width=max(len(column), 6))
    table.add_column(columns[-1], no_wrap=True, overflow="ellipsis")
    return table
