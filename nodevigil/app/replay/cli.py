"""``nodevigil replay``: what a candidate configuration would have done over the history."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from monitor.history import DurableHistoryStore
from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.app.replay.compare import write_text
from nodevigil.app.replay.run import DEFAULT_WARMUP, Request, compare
from nodevigil.app.replay.window import ReplayInputError, window
from nodevigil.core.config import Config, load_config
from nodevigil.core.durations import parse_duration
from nodevigil.core.errors import StateError
from nodevigil.state.backend import SqliteBackend, backend_for
from sla.inputs import read_charges


def add_arguments(sub: Any, default_config: str) -> None:
    """The ``replay`` command."""
    cmd = sub.add_parser(
        "replay",
        help="replay a candidate configuration over the probe history and print what it "
        "would have done differently (changes nothing)",
    )
    cmd.add_argument("--config", required=True, type=Path, help="the candidate configuration")
    cmd.add_argument(
        "--running",
        default=default_config,
        type=Path,
        help=f"the running configuration: its state holds the history (default {default_config})",
    )
    cmd.add_argument("--from", dest="since", default="-24h", help="RFC 3339, epoch or -24h")
    cmd.add_argument("--to", dest="until", default="now", help="RFC 3339, epoch, now or -1h")
    cmd.add_argument("--output", choices=["text", "json"], default="text")
    cmd.add_argument("--charges", type=Path, help="a charges CSV (as `sla credits`): credit")
    cmd.add_argument(
        "--warmup",
        default=f"{DEFAULT_WARMUP:g}s",
        help="history replayed before --from to settle verdicts (reported: nothing)",
    )
    cmd.add_argument(
        "--tolerance", default="1s", help="actions this close in time count as the same"
    )


def _seconds(text: str, name: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ReplayInputError(f"--{name}: {exc}") from None


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``replay``; errors (ConfigError, StateError, ReplayInputError) go to the caller."""
    out = out or sys.stdout
    # Both files as check-config reads them (secrets are not needed to replay).
    candidate = load_config(args.config, event_kinds=EVENT_KINDS)
    running = load_config(args.running, event_kinds=EVENT_KINDS)
    since, until = window(args.since, args.until, now=time.time())
    request = Request(
        candidate,
        running,
        since,
        until,
        warmup=_seconds(args.warmup, "warmup"),
        tolerance=_seconds(args.tolerance, "tolerance"),
        charges=read_charges(args.charges) if args.charges else (),
    )
    data = asyncio.run(_compare(running, args.running.resolve().parent, request))
    if args.output == "json":
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        write_text(data, out)
    return 0


async def _compare(running: Config, base_dir: Path, request: Request) -> dict[str, Any]:
    backend = backend_for(running, base_dir)
    if isinstance(backend, SqliteBackend):
        path = backend.state_dir / "history.db"
        if not path.exists():  # never create an empty history just to read it
            raise StateError(f"no probe history at {path}: the daemon records it there")
    await backend.open()
    try:
        store: DurableHistoryStore = backend.history_store()
        await store.open()
        try:
            return await compare(store, request)
        finally:
            await store.close()
    finally:
        await backend.close()
