"""Read a configuration file's YAML defensively: hostile or broken input is a clear error.

``yaml.safe_load`` already refuses arbitrary Python objects, but it still crashes or hangs on
other input an operator (or a broken deployment) can produce: bytes that are not UTF-8,
``/dev/zero`` given as the file, nesting deep enough to exhaust Python's recursion limit,
integers too long to convert, impossible dates, and aliases that expand a few lines into
billions of values. Duplicate keys are silently dropped by YAML loaders; here they are an error,
because the operator's first ``nodes:`` section would vanish without a word.

libyaml's C parser reads a file when PyYAML has it (a 10,000-node fleet in ~0.3 s instead of
~3.5 s); any file it refuses, or whose checks fail, is read again by the pure-Python loader, so
every refusal says the same thing with the same line numbers either way.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import CollectionNode, MappingNode, Node

MAX_FILE_BYTES = 16 * 1024 * 1024  # a 10,000-node fleet is a few MB
MAX_DEPTH = 64  # real configurations nest about 8 levels
# Aliases may repeat a probe list for every node, but not turn a few lines into millions of
# values ("billion laughs"): the expanded document may hold at most this many values, or ten
# times as many as the file itself writes, whichever is more.
MAX_EXPANDED = 1_000_000
_MERGE = "tag:yaml.org,2002:merge"


class YamlProblem(Exception):
    """The file cannot be read as YAML; the message is one line for the operator."""


class _Checks(SafeConstructor):
    """The safe constructor, with duplicate keys refused and value errors marked."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # int('9' * 5000), date 2026-02-30, ...
            raise ConstructorError(
                None, None, f"cannot read this value: {str(exc).split(';')[0]}", node.start_mark
            ) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} appears twice (YAML would silently drop the first)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Loader(_Checks, yaml.SafeLoader):
    """The pure-Python safe loader, with the checks and a depth limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Reader(Protocol):
    """What parse_yaml needs of a loader, the C one or the Python one."""

    def get_single_node(self) -> Node | None: ...
    def construct_document(self, node: Node) -> Any: ...
    def dispose(self) -> None: ...


class _Retry(Exception):
    """The C loader's answer is not trusted: read the text again with the Python loader."""


_CLoader: Callable[[str], _Reader] | None = None
if yaml.__with_libyaml__:

    class _LibyamlLoader(_Checks, yaml.CSafeLoader):
        """libyaml's parser and composer (its own nesting limit is 1,000 levels, so its
        recursion stays bounded) under the same checks; the depth is checked afterwards."""

    _CLoader = _LibyamlLoader


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; raise OSError, or YamlProblem with a one-line reason."""
    with path.open("rb") as file:
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise YamlProblem(
            f"larger than {MAX_FILE_BYTES // 2**20} MiB: is this the configuration file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlProblem(
            f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    return parse_yaml(text)


def parse_yaml(text: str) -> Any:
    """The single YAML document in ``text``; raise YamlProblem with a one-line reason."""
    with _collector_paused():
        if _CLoader is not None:
            try:
                return _load(_CLoader(text))
            except (yaml.YAMLError, YamlProblem, _Retry):
                pass  # the Python loader below says what is wrong, as it always has
        return _python_load(text)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """A parse allocates ~1 object per value and frees none: the garbage collector would
    walk them again and again for nothing (3/4 of the C loader's time at 10,000 nodes)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(loader: _Reader) -> Any:
    """The document through ``loader``: composed, checked for aliases and depth, built."""
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _check_expansion(root) > MAX_DEPTH and not isinstance(loader, _Loader):
            # Deep by the C loader's count, which follows aliases: the Python loader
            # counts nesting as written, and says where it is too deep (if it is).
            raise _Retry
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _python_load(text: str) -> Any:
    try:
        return _load(_Loader(text))  # checks that every character is printable
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_describe(exc)) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise YamlProblem(
            f"line {line}: not valid YAML: the control character U+{exc.character:04X} "
            "is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {' '.join(str(exc).split())}") from None


def _describe(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = " ".join((exc.problem or exc.context or "").split())
    return f"{where}not valid YAML: {problem}"


def _check_expansion(root: Node) -> int:
    """Refuse aliases that refer to their own ancestor or expand into too many values; return
    the depth of the document with its aliases followed (the root alone is 1)."""
    if not isinstance(root, CollectionNode):
        return 1
    # Scalars (most of a fleet's values) count 1 and are 1 deep: they never enter the stack.
    scalars: set[int] = set()
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, list[Node] | None]] = [(root, None)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done is not None:  # its children are measured
            on_path.discard(key)
            total, deepest = 1, 0
            for child in done:
                ck = id(child)
                total += size.get(ck, 1)
                deeper = height.get(ck, 1)
                deepest = max(deepest, deeper)
            size[key] = min(total, MAX_EXPANDED * 1000)  # bounded: only "too many" matters
            height[key] = 1 + deepest
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlProblem(
                f"line {node.start_mark.line + 1}: an alias refers to a value that contains it"
            )
        on_path.add(key)
        children = _children(node)
        stack.append((node, children))
        for child in children:
            ck = id(child)
            if not isinstance(child, CollectionNode):
                scalars.add(ck)
            elif ck in on_path:
                raise YamlProblem(
                    f"line {child.start_mark.line + 1}: an alias refers to a value that contains it"
                )
            elif ck not in size:
                stack.append((child, None))
    limit = max(MAX_EXPANDED, 10 * (len(size) + len(scalars)))
    if size[id(root)] > limit:
        raise YamlProblem(
            f"its aliases expand it to more than {limit:,} values (a 'billion laughs' bomb?)"
        )
    return height[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, CollectionNode):
        return list(node.value)
    return []
