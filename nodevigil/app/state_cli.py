"""``nodevigil db migrate|status`` and ``nodevigil state export|import``: the state's schema, and
moving one host's state between SQLite and PostgreSQL (docs/operations.md, "State on
PostgreSQL"). They run without the daemon; export and import refuse while it runs on the state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.core.config import load_config
from nodevigil.core.errors import StateError
from nodevigil.state.backend import Backend, backend_for
from nodevigil.state.schemas import SchemaVersion
from nodevigil.state.transfer import export_state, import_state, tables_for

DEFAULT_CONFIG = Path("/etc/nodevigil/nodevigil.yaml")


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``db`` and ``state`` commands."""
    db = sub.add_parser("db", help="the state's schema: migrate before an upgrade, or show it")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("migrate", help="apply every store's schema migrations and exit")
    actions.add_parser("status", help="each store's schema version, and whether it is known")
    for cmd in actions.choices.values():
        cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path)

    state = sub.add_parser("state", help="move one host's state between SQLite and PostgreSQL")
    actions = state.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the whole state to a file")
    export.add_argument("--to", required=True, type=Path, help="the file to write (JSON lines)")
    load = actions.add_parser("import", help="load a file from `state export` into this state")
    load.add_argument("file", type=Path)
    load.add_argument("--force", action="store_true", help="replace a state that is not empty")
    for cmd in (export, load):
        cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path)


def run(args: argparse.Namespace) -> int:
    """Run ``db`` or ``state``; errors (StateError, ConfigError) are printed by the caller."""
    config = load_config(args.config, event_kinds=EVENT_KINDS)
    backend = backend_for(config, args.config.resolve().parent)
    if args.command == "db" and args.action == "migrate":
        return _migrate(backend)
    if args.command == "db":
        return _status(backend)
    if args.action == "export":
        return _export(backend, args.to)
    return _import(backend, args.file, force=args.force)


def _migrate(backend: Backend) -> int:
    for step in asyncio.run(backend.migrate()):
        what = "up to date" if step.before == step.after else "migrated"
        what = "created" if step.before == 0 and step.after else what
        print(f"{step.component:<11} {step.before} -> {step.after}  {what}  ({step.where})")
    return 0


def _status(backend: Backend) -> int:
    found = asyncio.run(backend.schema_versions())
    for v in found:
        shown = "-" if v.version is None else str(v.version)
        print(f"{v.component:<11} {shown:>2} (known: {v.known})  {_meaning(v)}  ({v.where})")
    newer = [v for v in found if v.state == "newer"]
    if newer:
        print(
            f"nodevigil: schema newer than this nodevigil knows: "
            f"{', '.join(v.component for v in newer)}: upgrade nodevigil",
            file=sys.stderr,
        )
        return 1
    return 0


def _meaning(v: SchemaVersion) -> str:
    return {
        "current": "current",
        "absent": "not created yet (db migrate or the first start creates it)",
        "older": "older: `nodevigil db migrate` brings it up to date",
        "newer": "NEWER than this nodevigil knows: refused",
    }[v.state]


def _export(backend: Backend, path: Path) -> int:
    started = time.monotonic()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tables_for(backend) as source:
            # Written aside and renamed: a failed export never leaves a file that looks whole.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w", encoding="ascii", newline="\n") as out:
                counts = export_state(source, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            where = source.where
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _report(counts)
    took = time.monotonic() - started
    print(f"exported {sum(counts.values())} rows from {where} to {path} in {took:.2f}s")
    return 0


def _import(backend: Backend, path: Path, *, force: bool) -> int:
    started = time.monotonic()
    with tables_for(backend) as target:
        counts = import_state(target, path, force=force)
        where = target.where
    _report(counts)
    took = time.monotonic() - started
    print(f"imported {sum(counts.values())} rows from {path} into {where} in {took:.2f}s "
          "(counts checked)")  # fmt: skip
    return 0


def _report(counts: dict[str, int]) -> None:
    for name, n in counts.items():
        print(f"{name:<24} {n:>9}")
