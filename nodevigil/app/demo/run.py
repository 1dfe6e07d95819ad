"""``nodevigil demo``: build the world, play the story, show the figures, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from nodevigil.app.demo.options import DemoOptions
from nodevigil.app.demo.servers import ProgramError
from nodevigil.app.demo.settings import RECORD, SITES, ZONE, Timings
from nodevigil.app.demo.story import Story
from nodevigil.app.demo.view import Narrator, narrator_for
from nodevigil.app.demo.world import DemoError, Programs, World, temporary_workdir

log = logging.getLogger(__name__)


def intro(world: World, kept: bool) -> str:
    """Where everything listens, the admin token and a few commands to try."""
    api = world.api_url
    token = world.admin_token
    lines = [
        f"the world, in {world.workdir}"
        + ("" if kept else " (removed at exit; --workdir DIR keeps it)")
        + ":",
        f"  nodevigil config   {world.config_path}",
        f"  nodevigil log      {world.workdir / 'nodevigil.log'}",
        "  nodes              "
        + ", ".join(f"{name} :{node.port}" for name, node in world.nodes.items()),
    ]
    for site, haproxy in world.haproxies.items():
        lines.append(f"  HAProxy {site:<10} {haproxy.url}  (runtime API {haproxy.socket_path})")
    if world.bind is not None:
        lines.append(
            f"  BIND               {world.bind.server} serving {ZONE}  "
            f"(dig @127.0.0.1 -p {world.bind.port} {RECORD} A)"
        )
    if world.broker is not None:
        lines.append(f"  Mosquitto          {world.broker.url}  (one node agent per node)")
    lines += [
        f"  customer webhook   {world.receiver.url}",
        f"  sites              {', '.join(f'{s} {a}' for s, a in SITES.items())}",
        f"  status page        {api}/status",
        f"  metrics            {api}/metrics",
        f"  API                {api}/api/v1/   admin token: {token}",
        "try, in another terminal:",
        f"  curl -s -H 'Authorization: Bearer {token}' {api}/api/v1/status",
        f"  curl -s -H 'Authorization: Bearer {token}' {api}/api/v1/sla/credits",
        f"  curl -s {api}/metrics | grep nodevigil_node_up",
    ]
    return "\n".join(lines)


def summary(figures: list[tuple[str, str]]) -> str:
    """The measured figures, aligned."""
    width = max((len(what) for what, _ in figures), default=0)
    return "\n".join(["measured:", *(f"  {what:<{width}}  {fig}" for what, fig in figures)])


def log_to_file(path: Path, level: str) -> logging.Handler:
    """Send every log record to ``path`` instead of the terminal (the view owns the terminal)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


async def play(options: DemoOptions, log_level: str = "INFO") -> int:
    """Run the demo; 0 when every step reached its outcome, 1 otherwise."""
    timings = Timings(options.speed)
    programs = Programs.detect(options.without)
    plain = Narrator()
    for note in programs.notes:
        plain.say(note)
    async with temporary_workdir(options.workdir) as workdir:
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        handler = await asyncio.to_thread(log_to_file, workdir / "nodevigil.log", log_level)
        try:
            plain.say(f"building the world in {workdir} (speed {options.speed:g})")
            return await _in_world(options, timings, programs, workdir, plain)
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()


async def _in_world(
    options: DemoOptions, timings: Timings, programs: Programs, workdir: Path, plain: Narrator
) -> int:
    try:
        async with World(workdir, timings, programs) as world:
            narrator = narrator_for(world, options.live, plain)
            narrator.started = plain.started
            story = Story(world, narrator, timings)
            failure: str | None = None
            async with narrator, story.watching():
                try:
                    await story.ready()
                    narrator.block(intro(world, kept=options.workdir is not None))
                    await story.play()
                except DemoError as exc:
                    failure = str(exc)
            if story.figures:
                plain.block(summary(story.figures))
            if failure is not None:
                plain.say(f"demo FAILED: {failure} (see {workdir / 'nodevigil.log'})")
            else:
                plain.say("the story is over: every step reached its outcome")
            if options.keep_running:
                plain.say("the world stays up to explore (URLs above); Ctrl-C stops everything")
                await asyncio.Event().wait()
            plain.say("stopping nodevigil and every server")
            return 1 if failure is not None else 0
    except (DemoError, ProgramError) as exc:
        plain.say(f"demo FAILED: {exc}")
        return 1


def main(options: DemoOptions, log_level: str = "INFO") -> int:
    """Run the demo in a fresh event loop; Ctrl-C or SIGTERM stop it cleanly."""

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        terminated = False

        def terminate() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, terminate)
        try:
            return await play(options, log_level)
        except asyncio.CancelledError:
            if terminated:
                print("terminated: everything stopped", file=sys.stderr)
                return 143
            raise  # Ctrl-C: asyncio.run turns it into KeyboardInterrupt
        finally:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(guarded())
    except KeyboardInterrupt:
        print("\ninterrupted: everything stopped", file=sys.stderr)
        return 130
