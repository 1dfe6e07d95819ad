"""The ``nodevigil demo`` command line: its arguments and the options they make."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

OPTIONAL_PROGRAMS = ("haproxy", "bind", "mosquitto")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``nodevigil demo`` was asked to do."""

    speed: float = 1.0
    keep_running: bool = False
    live: bool = True
    workdir: Path | None = None
    without: frozenset[str] = field(default_factory=frozenset)


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.1 <= value <= 20:
        raise argparse.ArgumentTypeError("give a speed from 0.1 to 20")
    return value


def _without(text: str) -> frozenset[str]:
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = names - set(OPTIONAL_PROGRAMS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(sorted(unknown))}: choose from {', '.join(OPTIONAL_PROGRAMS)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's arguments."""
    parser.add_argument("--speed", type=_speed, default=1.0, help="divide every timing by N")
    parser.add_argument(
        "--keep-running", action="store_true", help="leave the world up after the story"
    )
    parser.add_argument("--no-live", action="store_true", help="plain lines, no live table")
    parser.add_argument("--workdir", type=Path, help="an empty directory to build the world in")
    parser.add_argument(
        "--without",
        type=_without,
        default=frozenset(),
        metavar="PROGRAMS",
        help="use the in-process stand-ins instead of some of haproxy,bind,mosquitto",
    )


def from_args(args: argparse.Namespace) -> DemoOptions:
    """The options; the live view only when stdout is a terminal."""
    return DemoOptions(
        speed=args.speed,
        keep_running=args.keep_running,
        live=sys.stdout.isatty() and not args.no_live,
        workdir=args.workdir,
        without=args.without,
    )
