"""The house in layers: every module imports only downward (docs: README, "Layout").

kernel (``nodevigil/core``, ``nodevigil/__init__``) <- domains (``monitor``, ``failover``,
``sla``) <- state backends (``nodevigil/state``) <- application (``nodevigil/app``), which
nothing imports but ``nodevigil/__main__``. Imports are read with ``ast``: at module level,
inside functions and under ``TYPE_CHECKING`` alike, relative ones resolved.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nodevigil", "monitor", "failover", "sla")
DOMAINS = ("monitor", "failover", "sla")
# The one arrow between domains: failover reads the monitor's verdict types.
DOMAIN_EXCEPTIONS = {("failover", "monitor.verdicts")}
DATABASE_DRIVERS = ("sqlite3", "psycopg", "psycopg_pool")
ENTRY_POINT = "nodevigil.__main__"


@dataclass(frozen=True, slots=True)
class Arrow:
    """One import: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """``nodevigil/core/clock.py`` -> ``nodevigil.core.clock``; a package is its ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(
    module: str, source: str, *, is_package: bool
) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """Every import in ``source``, anywhere in it: (module, names taken from it, line)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target, tuple(a.name for a in node.names), node.lineno


def layer_of(module: str) -> str | None:
    """The layer a module of ours belongs to; None for a module that is not ours."""
    top = module.split(".", maxsplit=1)[0]
    if top in DOMAINS:
        return top
    if top != "nodevigil":
        return None
    if module in ("nodevigil", ENTRY_POINT):
        return "kernel" if module == "nodevigil" else "entry"
    second = module.split(".")[1]
    return {"core": "kernel", "state": "state", "app": "app"}.get(second, "unplaced")


def violation(arrow: Arrow) -> str | None:
    """Why ``arrow`` breaks the layers, or None when it is allowed."""
    source, target = layer_of(arrow.source), layer_of(arrow.target)
    top = arrow.target.split(".", maxsplit=1)[0]
    if top in DATABASE_DRIVERS and source != "state":
        return f"{top} outside nodevigil/state"
    if target is None or source == target:
        return None
    if "unplaced" in (source, target):
        return "a module outside the layers (core, state, app)"
    if target == "entry":
        return "nothing imports the entry point"
    if source == "entry":
        allowed = target in ("kernel", "app")
    elif source == "kernel":
        allowed = False
    elif source in DOMAINS:
        allowed = target == "kernel" or any(
            source == s and (arrow.target == t or arrow.target.startswith(t + "."))
            for s, t in DOMAIN_EXCEPTIONS
        )
    elif source == "state":
        allowed = target == "kernel" or target in DOMAINS
    else:  # app
        allowed = True
    return None if allowed else f"{source} -> {target}"


def arrows(sources: Mapping[str, tuple[str, bool]]) -> Iterator[Arrow]:
    """The imports of every module in ``sources`` (name -> (text, is_package)) worth judging:
    ours, and the database drivers. ``from a import b`` is an arrow to ``a.b`` when that is a
    module, else to ``a``."""
    for module, (text, is_package) in sources.items():
        seen: set[str] = set()
        for imported, names, line in imports_of(module, text, is_package=is_package):
            top = imported.split(".", maxsplit=1)[0]
            if top not in PACKAGES and top not in DATABASE_DRIVERS:
                continue
            submodules = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in sources]
            if len(submodules) < len(names) or not names:
                submodules.append(imported)
            for target in submodules:
                if target not in seen:
                    seen.add(target)
                    yield Arrow(module, target, line)


def violations(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Every arrow against the rules, one readable line each."""
    out = []
    for arrow in arrows(sources):
        why = violation(arrow)
        if why is not None:
            out.append(f"{arrow.source}:{arrow.line} imports {arrow.target} ({why})")
    return sorted(out)


def project_sources() -> dict[str, tuple[str, bool]]:
    """Every module of ours: name -> (text, is a package)."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            sources[module_name(path)] = (path.read_text(encoding="utf-8"), path.stem == "__init__")
    return sources


def test_every_import_goes_downward() -> None:
    sources = project_sources()
    assert len(sources) > 100  # the walk found the project
    problems = violations(sources)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in project_sources() if layer_of(m) == "unplaced"]
    assert not unplaced, f"modules outside core/, state/ and app/: {unplaced}"


def fake(modules: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
    """A module graph for the checker: module name -> its text (none is a package)."""
    return {name: (text, False) for name, text in modules.items()}


def test_the_checker_catches_planted_violations() -> None:
    graph = fake(
        {
            "nodevigil.core.clock": "from nodevigil.app import daemon\n",
            "nodevigil.core.errors": "",
            "nodevigil.app.daemon": "from nodevigil.core import errors\n",
            "monitor.probe": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from nodevigil.state.sqlite import worker\n"
            ),
            "failover.loop": (
                "def late():\n    import sla.ledger\n"
                "from monitor.verdicts import Verdict\n"
                "from monitor import probe\n"
            ),
            "sla.ledger": "import sqlite3\n",
            "monitor.verdicts": "",
            "nodevigil.state.sqlite.worker": (
                "import sqlite3\nfrom sla.ledger import Ledger\nfrom ...app import daemon\n"
            ),
            "nodevigil.loose": "",
        }
    )
    problems = violations(graph)
    assert problems == [
        "failover.loop:2 imports sla.ledger (failover -> sla)",
        "failover.loop:4 imports monitor.probe (failover -> monitor)",
        "monitor.probe:3 imports nodevigil.state.sqlite.worker (monitor -> state)",
        "nodevigil.core.clock:1 imports nodevigil.app.daemon (kernel -> app)",
        "nodevigil.state.sqlite.worker:3 imports nodevigil.app.daemon (state -> app)",
        "sla.ledger:1 imports sqlite3 (sqlite3 outside nodevigil/state)",
    ], problems
    assert layer_of("nodevigil.loose") == "unplaced"


def test_relative_imports_are_resolved() -> None:
    text = "from ..errors import ConfigError\n"
    found = list(imports_of("nodevigil.core.config.load", text, is_package=False))
    assert found == [("nodevigil.core.errors", ("ConfigError",), 1)]
    found = list(imports_of("nodevigil.core.config", "from . import load\n", is_package=True))
    assert found == [("nodevigil.core.config", ("load",), 1)]


def test_only_the_entry_point_imports_the_app() -> None:
    graph = fake(
        {
            "nodevigil.__main__": (
                "from nodevigil.core.signals import E\nfrom nodevigil.app.cli import main\n"
            ),
            "nodevigil.core.signals": "",
            "nodevigil.app.cli": "import nodevigil.__main__\n",
        }
    )
    assert violations(graph) == [
        "nodevigil.app.cli:1 imports nodevigil.__main__ (nothing imports the entry point)"
    ]
