"""The configuration reference's examples are checked against the schema, so they cannot drift."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from nodevigil.core.config import parse_config
from nodevigil.core.config.reference import EXAMPLES, SECTIONS, render
from nodevigil.core.config.schema import Config

MODELS = dict(SECTIONS)


def _load(title: str) -> Any:
    data = yaml.safe_load(EXAMPLES[title].text)
    assert isinstance(data, dict), f"{title}: the example must be a mapping of top-level keys"
    return data


def _walk(data: Any, path: tuple[str | int, ...], title: str) -> Any:
    node = data
    for step in path:
        if isinstance(step, int):
            assert isinstance(node, list) and step < len(node), f"{title}: no item {step}"
        else:
            assert isinstance(node, dict) and step in node, f"{title}: no key {step!r}"
        node = node[step]
    return node


def _title_path(title: str) -> list[str] | None:
    """``nodes[].probes[] type: http`` -> ``["nodes", "[]", "probes", "[]"]``; NAME is a key."""
    if title == "top level":
        return []
    if title.startswith("secrets "):
        return None  # one shape used in several places: the example shows one of them
    steps: list[str] = []
    for part in title.split(" ", 1)[0].split("."):
        match = re.fullmatch(r"([A-Za-z_]+)(\[\])?", part)
        assert match, f"{title}: cannot read {part!r}"
        steps.append(match.group(1))
        if match.group(2):
            steps.append("[]")
    return steps


def test_every_section_has_an_example_and_no_example_is_orphaned() -> None:
    assert list(EXAMPLES) == [title for title, _ in SECTIONS]


@pytest.mark.parametrize("title", list(EXAMPLES))
def test_example_object_validates_with_its_sections_model(title: str) -> None:
    model: type[BaseModel] = MODELS[title]
    example = EXAMPLES[title]
    obj = _walk(_load(title), example.path, title)
    assert isinstance(obj, dict), f"{title}: {example.path} must lead to a mapping"
    model.model_validate(obj)  # a renamed or removed key fails here (extra="forbid")


@pytest.mark.parametrize("title", list(EXAMPLES))
def test_example_is_a_fragment_of_a_valid_configuration_file(title: str) -> None:
    # The context around the object (section names, discriminators) is checked too.
    Config.model_validate(_load(title))


@pytest.mark.parametrize("title", list(EXAMPLES))
def test_example_path_matches_the_section_title(title: str) -> None:
    example = EXAMPLES[title]
    expected = _title_path(title)
    if expected is None:
        return
    actual = ["[]" if isinstance(step, int) else step for step in example.path]
    assert len(actual) == len(expected), f"{title}: path {example.path}"
    for want, got in zip(expected, actual, strict=True):
        if want == "NAME":
            assert got != "[]", f"{title}: path {example.path}"
        else:
            assert got == want, f"{title}: path {example.path}"
    match = re.search(r" type: (\S+)$", title)
    if match:
        obj = _walk(_load(title), example.path, title)
        assert obj["type"] == match.group(1)


def test_top_level_example_is_a_complete_configuration() -> None:
    config = parse_config(_load("top level"))  # cross-references and semantic checks included
    assert [n.name for n in config.nodes] == ["sh-1", "sh-2"]


def test_secret_example_is_a_bare_secret_reference() -> None:
    (title,) = [t for t in EXAMPLES if t.startswith("secrets ")]
    obj = _walk(_load(title), EXAMPLES[title].path, title)
    assert len(obj) == 1 and set(obj) <= {"secret_file", "secret_env"}


def test_examples_are_rendered_under_their_sections() -> None:
    doc = render()
    for title, example in EXAMPLES.items():
        section = doc.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        assert f"```yaml\n{example.text}\n```" in section
