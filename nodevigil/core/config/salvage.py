"""Cross-reference checks for a configuration with schema errors, so one pass reports both.

A schema error leaves no Config to check references on. Here each invalid entry (a site, a node,
a load balancer, ...) or invalid section is set aside, the rest is validated again, and the
usual checks run on that. Their findings are mapped back to the original positions, and those
that only follow from setting something aside (a reference to a node that was set aside, a
section that is missing because it was invalid) are dropped: the schema error already said it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nodevigil.core.config.schema import Config

# Where an entry can be set aside on its own: (list or mapping under the top level, its name key)
_LISTS = {
    "sites": "name",
    "nodes": "name",
    "services": "name",
    "customers": "id",
    "alerts": "",
    "maintenance": "",
}
_MAPS = ("load_balancers", "notifiers", "contingency_plans")
_LEADING_INDEX = re.compile(r"^(api\.tokens|[a-z_]+)\[(\d+)\]")


@dataclass
class _SetAside:
    items: dict[str, set[int]] = field(default_factory=dict)  # list path -> indices
    keys: dict[str, set[str]] = field(default_factory=dict)  # mapping -> keys
    sections: set[str] = field(default_factory=set)  # top-level keys dropped
    names: set[str] = field(default_factory=set)  # the names of what was set aside
    index_maps: dict[str, list[int]] = field(default_factory=dict)  # new index -> old


def reference_problems(
    data: dict[str, Any],
    error: ValidationError,
    base_dir: Path | None,
    checks: Callable[[Config], Iterable[str]],
) -> list[str]:
    """What ``checks`` find on the valid part of ``data`` (positions as in ``data``)."""
    aside = _SetAside()
    for problem in error.errors(include_url=False):
        _set_aside(aside, data, problem["loc"])
    pruned = _prune(data, aside)
    try:
        config = Config.model_validate(pruned, context={"base_dir": base_dir})
    except ValidationError:
        return []  # what is left still fails: the schema errors alone must do
    return [fixed for p in checks(config) if (fixed := _restore(p, aside)) is not None]


def _set_aside(aside: _SetAside, data: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    if not loc or not isinstance(loc[0], str):
        return
    top = loc[0]
    value = data.get(top)
    if top == "api" and len(loc) > 2 and loc[1] == "tokens" and isinstance(loc[2], int):
        aside.items.setdefault("api.tokens", set()).add(loc[2])
        return
    if top in _LISTS and len(loc) > 1 and isinstance(loc[1], int) and isinstance(value, list):
        aside.items.setdefault(top, set()).add(loc[1])
        item = value[loc[1]] if loc[1] < len(value) else None
        name = item.get(_LISTS[top]) if isinstance(item, dict) and _LISTS[top] else None
        if isinstance(name, str):
            aside.names.add(name)
        return
    if top in _MAPS and len(loc) > 1 and isinstance(loc[1], str) and isinstance(value, dict):
        aside.keys.setdefault(top, set()).add(loc[1])
        aside.names.add(loc[1])
        return
    aside.sections.add(top)


def _prune(data: dict[str, Any], aside: _SetAside) -> dict[str, Any]:
    pruned = {k: v for k, v in data.items() if k not in aside.sections}
    for path, indices in aside.items.items():
        holder = pruned
        if path == "api.tokens":
            if not isinstance(pruned.get("api"), dict):
                continue
            holder = pruned["api"] = dict(pruned["api"])
        key = path.rsplit(".", 1)[-1]
        items = holder.get(key)
        if not isinstance(items, list):
            continue
        kept = [i for i in range(len(items)) if i not in indices]
        holder[key] = [items[i] for i in kept]
        aside.index_maps[path] = kept
    for top, keys in aside.keys.items():
        pruned[top] = {k: v for k, v in pruned[top].items() if k not in keys}
    return pruned


def _restore(problem: str, aside: _SetAside) -> str | None:
    """The problem with its list positions as written, or None when setting aside caused it."""
    if any(f"is called {name!r}" in problem for name in aside.names):
        return None  # it refers to an entry set aside for a schema error
    if any(re.search(rf"\b{re.escape(s)}\b", problem) for s in aside.sections):
        return None  # about a section set aside (``needs the top-level mqtt section``)
    if "nodes" in aside.items and ".min_healthy:" in problem:
        return None  # a site's size counts the nodes set aside too
    match = _LEADING_INDEX.match(problem)
    if match is None or match.group(1) not in aside.index_maps:
        return problem
    old = aside.index_maps[match.group(1)][int(match.group(2))]
    return f"{match.group(1)}[{old}]{problem[match.end() :]}"
