"""Configuration fuzzing: every broken file is refused with exit 1 and one clear line per problem.

Invalid files are made by mutating valid ones (the shipped ``configs/example.yaml`` and a richer
configuration below that uses every section) and by generating raw bytes and YAML oddities. Most
cases run ``nodevigil check-config`` in-process through the CLI's entry point, so an unexpected
exception fails the test with its traceback; a handful run the real console script as a
subprocess to prove the exit code and stderr. Hypothesis runs derandomized, so a run is
repeatable.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import sys
import types
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from nodevigil.app.cli import main
from nodevigil.core.config.schema import NAME_PATTERN, Config
from nodevigil.core.durations import parse_duration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "example.yaml"
NODEVIGIL = Path(sys.executable).with_name("nodevigil")
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=40,  # per mutation kind; each example is one full check-config (~15 ms)
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ_MORE = settings(FUZZ, max_examples=100)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's is 20 times faster
DIGEST = "91c16f0d6cc1bec3c3603972182a07c66ff4fa71618a975e963d6dbe42b6dd37"

# Every section, every probe, load balancer and notifier type, cross-references between them.
RICH: dict[str, Any] = {
    "timezone": "Asia/Shanghai",
    "state_dir": "./state",
    "vantage": "ops-1",
    "api": {
        "listen": "127.0.0.1:9470",
        "tokens": [
            {"name": "ops", "role": "admin", "sha256": DIGEST},
            {"name": "acme-ro", "role": "customer", "customer": "acme", "sha256": DIGEST},
        ],
        "max_body": 65536,
    },
    "mqtt": {
        "url": "mqtt://127.0.0.1:1883",
        "username": "nodevigil",
        "password": {"secret_env": "MQTT_PASSWORD"},
    },
    "defaults": {
        "interval": "1s",
        "timeout": "500ms",
        "rise": 2,
        "fall": 3,
        "attempts": 2,
        "flap": {"window": "2m", "max_changes": 6, "hold": "1m"},
    },
    "failover": {"cycle": "1s", "hold_down": "30s", "hold_down_max": "10m"},
    "load_balancers": {
        "east-haproxy": {"type": "haproxy", "socket": "/run/haproxy/admin.sock", "backend": "web"},
        "west-haproxy": {"type": "haproxy", "address": "127.0.0.1:9999", "backend": "web"},
        "dns": {
            "type": "rfc2136",
            "server": "127.0.0.1:53",
            "zone": "example.com.",
            "ttl": 30,
            "tsig": {"name": "nodevigil", "secret_file": "tsig.key"},
        },
        "pdns": {
            "type": "powerdns",
            "url": "http://127.0.0.1:8081",
            "zone": "example.org.",
            "api_key": {"secret_env": "PDNS_KEY"},
        },
    },
    "sites": [
        {"name": "east", "address": "192.0.2.10", "local_lb": "east-haproxy", "min_healthy": 1},
        {"name": "west", "address": "2001:db8::10", "local_lb": "west-haproxy"},
    ],
    "nodes": [
        {
            "name": "east-1",
            "site": "east",
            "addresses": ["192.0.2.11"],
            "labels": {"role": "web"},
            "probes": [
                {"type": "http", "url": "http://192.0.2.11/healthz", "expect_status": [200]},
                {"type": "tcp", "address": "192.0.2.11:443", "interval": "2s", "timeout": "1s"},
                {"type": "mqtt", "max_silence": "10s", "limits": {"disk_percent": 95}},
            ],
        },
        {
            "name": "west-1",
            "site": "west",
            "require": "any",
            "probes": [
                {"type": "tls", "address": "[2001:db8::11]:443", "min_days_left": 7},
                {"type": "dns", "server": "127.0.0.1", "query": "west.example.", "expect": []},
                {"type": "icmp", "address": "2001:db8::11", "count": 2},
            ],
        },
    ],
    "services": [
        {"name": "web", "sites": ["east", "west"], "global_lb": "dns", "record": "www"},
    ],
    "customers": [{"id": "acme", "services": ["web"], "plan": "gold"}],
    "notifiers": {
        "acme-hook": {"type": "webhook", "url": "https://hooks.example/nv", "secret_env": "WH"},
        "acme-mail": {
            "type": "email",
            "to": ["ops@acme.example"],
            "smtp": {
                "host": "smtp.example",
                "port": 587,
                "starttls": True,
                "username": "nv",
                "password": {"secret_file": "smtp.pw"},
            },
        },
        "ops-am": {"type": "alertmanager", "url": "http://127.0.0.1:9093"},
        "bus": {"type": "mqtt", "topic": "nodevigil/events"},
    },
    "contingency_plans": {
        "gold": {
            "steps": [
                {"after": "0s", "notify": ["acme-hook", "acme-mail"]},
                {"after": "15m", "notify": ["ops-am"]},
            ],
            "on_resolve": ["acme-hook"],
            "repeat_every": "1h",
        },
    },
    "alerts": [{"events": ["node.down", "site.*"], "notify": ["ops-am", "bus"]}],
    "maintenance": [
        {
            "start": "2026-12-01T02:00:00+08:00",
            "end": "2026-12-01T03:00:00+08:00",
            "services": ["web"],
            "note": "kernel upgrade",
        },
    ],
    "incidents": {"reopen_window": "10m"},
    "notifications": {"max_age": "24h", "backoff_initial": "1s", "backoff_max": "5m"},
    "sla": {"rounding": "per-outage"},
    "records": {"retention": "90d"},
}
BASES = {"example": yaml.safe_load(EXAMPLE.read_text()), "rich": RICH}

Path_ = tuple[str | int, ...]


# --- running check-config ---------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()


def check_config(path: Path) -> Outcome:
    """``nodevigil check-config -c PATH`` in-process; an escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["check-config", "-c", str(path)])
        except SystemExit as exc:  # argparse's own exits
            code = int(exc.code or 0)
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_well_behaved(path: Path, outcome: Outcome) -> None:
    """Accepted with one 'ok' line, or refused with exit 1 and one printable line per problem."""
    assert "Traceback" not in outcome.out + outcome.err
    if outcome.code == 0:
        assert outcome.out.startswith(f"{path}: ok ("), outcome
        assert outcome.err == ""
        return
    assert outcome.code == 1, outcome
    assert outcome.out == ""
    assert outcome.lines, "refused without a reason"
    for line in outcome.lines:
        assert line.startswith(f"{path}: "), line
        reason = line[len(f"{path}: ") :]
        assert reason.strip(), line
        assert reason.isprintable(), repr(line)
        assert len(reason) < 400, line


def assert_refused(path: Path, *expected: str) -> Outcome:
    """Refused (exit 1, well-behaved), and some line holds each expected fragment."""
    outcome = check_config(path)
    assert_well_behaved(path, outcome)
    assert outcome.code == 1, f"accepted: {path.read_bytes()[:2000]!r}"
    for fragment in expected:
        assert any(fragment in line for line in outcome.lines), (fragment, outcome.lines)
    return outcome


def write(directory: Path, data: Any) -> Path:
    path = directory / "nodevigil.yaml"
    text = yaml.dump(data, Dumper=DUMPER, allow_unicode=True, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def render(path: Path_) -> str:
    """``("nodes", 0, "probes")`` -> ``nodes[0].probes``, as the error messages write it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bases' secrets exist: check-config reads and checks every one, as ``run`` does."""
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "tsig.key").write_text("c2VjcmV0LWtleS1mb3ItdHNpZw==\n")
    (directory / "smtp.pw").write_text("smtp-password\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MQTT_PASSWORD", "mqtt-password")
        env.setenv("PDNS_KEY", "pdns-api-key")
        env.setenv("WH", "whsec_d2ViaG9vay1zZWNyZXQ=")
        yield directory


# --- the schema, walked beside the data -------------------------------------------------------

MISSING = object()


@dataclass(frozen=True)
class Spot:
    """One field of one configuration object in the data: where, its schema, its value."""

    path: Path_
    info: FieldInfo
    value: Any

    @property
    def nullable(self) -> bool:
        return type(None) in _members(self.info.annotation)

    @property
    def is_name(self) -> bool:
        return any(getattr(m, "pattern", None) == NAME_PATTERN for m in self.info.metadata)


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list[Any]:
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [_unwrap(member) for member in get_args(annotation)]
    return [annotation]


def _model_for(annotation: Any, value: Any) -> type[BaseModel] | None:
    if not isinstance(value, dict):
        return None
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(models) == 1:
        return models[0]
    for model in models:  # a union discriminated by ``type``
        tag = model.model_fields.get("type")
        if tag is not None and value.get("type") in get_args(_unwrap(tag.annotation)):
            return model
    return None


def spots(value: Any, annotation: Any = Config, path: Path_ = ()) -> Iterator[Spot]:
    """Every schema field of every object present in ``value`` (present or not)."""
    model = _model_for(annotation, value)
    if model is not None:
        for name, info in model.model_fields.items():
            yield Spot((*path, name), info, value.get(name, MISSING))
            if name in value:
                yield from spots(value[name], info.annotation, (*path, name))
        return
    for member in _members(annotation):
        if get_origin(member) is list and isinstance(value, list):
            for i, item in enumerate(value):
                yield from spots(item, get_args(member)[0], (*path, i))
            return
        if get_origin(member) is dict and isinstance(value, dict):
            for key, item in value.items():
                yield from spots(item, get_args(member)[1], (*path, key))
            return


def objects(value: Any, annotation: Any = Config, path: Path_ = ()) -> Iterator[Path_]:
    """The paths of every configuration object (mapping with a fixed set of keys)."""
    if _model_for(annotation, value) is not None:
        yield path
    for spot in spots(value, annotation, path):
        if spot.value is not MISSING and len(spot.path) == len(path) + 1:
            yield from objects(spot.value, spot.info.annotation, spot.path)


def values(data: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every value under the root with its path."""
    items: Any = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        yield (*path, key), value
        if isinstance(value, dict | list):
            yield from values(value, (*path, key))


def get(data: Any, path: Path_) -> Any:
    for part in path:
        data = data[part]
    return data


def replaced(data: Any, path: Path_, new: Any) -> Any:
    """A deep copy of ``data`` with the value at ``path`` replaced (or removed when MISSING)."""
    copy = deepcopy(data)
    parent = get(copy, path[:-1])
    if new is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copy


def test_the_bases_are_valid(workdir: Path) -> None:
    for data in BASES.values():
        outcome = check_config(write(workdir, data))
        assert outcome.code == 0, outcome.err


def _spots_where(predicate: Any) -> list[tuple[str, Spot]]:
    found = [(base, s) for base, data in BASES.items() for s in spots(data) if predicate(s)]
    assert found, "the bases have no such field"
    return found


def _located(outcome: Outcome, path: Path, where: Path_) -> None:
    """Some problem is reported at ``where`` or inside it."""
    head = f"{path}: {render(where)}"
    assert any(
        line.startswith(head) and line[len(head) : len(head) + 1] in (":", ".", "[", " ")
        for line in outcome.lines
    ), (render(where), outcome.lines)


# --- mutations that make any valid file invalid -----------------------------------------------

REQUIRED = _spots_where(lambda s: s.info.is_required() and s.value is not MISSING)
NOT_NULLABLE = _spots_where(lambda s: s.value is not MISSING and not s.nullable)
BOUNDED = _spots_where(
    lambda s: (
        isinstance(s.value, int)
        and not isinstance(s.value, bool)
        and any(isinstance(m, annotated_types.Ge | annotated_types.Le) for m in s.info.metadata)
    )
)
NAMES = _spots_where(lambda s: s.is_name and isinstance(s.value, str))


def _is_duration(spot: Spot) -> bool:
    if not isinstance(spot.value, str) or float not in _members(spot.info.annotation):
        return False
    try:
        parse_duration(spot.value)
    except ValueError:
        return False
    return True


DURATIONS = _spots_where(_is_duration)
URLS = _spots_where(lambda s: s.path[-1] == "url" and isinstance(s.value, str))
HOST_PORTS = [
    (base, spot)
    for base, spot in _spots_where(lambda s: s.path[-1] in ("listen", "server", "address"))
    if spot.path[0] != "sites" and get(BASES[base], spot.path[:-1]).get("type") != "icmp"
]


@FUZZ
@given(st.sampled_from(REQUIRED))
def test_a_missing_required_key_is_named(workdir: Path, case: tuple[str, Spot]) -> None:
    base, spot = case
    path = write(workdir, replaced(BASES[base], spot.path, MISSING))
    assert_refused(path, f"{render(spot.path)}: required key is missing")


@FUZZ
@given(st.sampled_from(NOT_NULLABLE))
def test_null_where_a_value_is_needed_is_named(workdir: Path, case: tuple[str, Spot]) -> None:
    base, spot = case
    path = write(workdir, replaced(BASES[base], spot.path, None))
    _located(assert_refused(path), path, spot.path)


SCALARS = [
    (b, p) for b, data in BASES.items() for p, v in values(data) if not isinstance(v, dict | list)
]
CONTAINERS = [
    (b, p) for b, data in BASES.items() for p, v in values(data) if isinstance(v, dict | list)
]


@FUZZ
@given(st.sampled_from(SCALARS), st.sampled_from([[], ["x"], {}, {"x": 1}, [[{}]]]))
def test_a_list_or_map_where_a_value_belongs_is_named(
    workdir: Path, case: tuple[str, Path_], new: Any
) -> None:
    base, where = case
    path = write(workdir, replaced(BASES[base], where, new))
    _located(assert_refused(path), path, where)


@FUZZ
@given(
    st.sampled_from(CONTAINERS),
    st.sampled_from([0, -1, 10**30, 2.5, True, "text", "", "\x1b[31m", "a" * 5000]),
)
def test_a_value_where_a_list_or_map_belongs_is_named(
    workdir: Path, case: tuple[str, Path_], new: Any
) -> None:
    base, where = case
    path = write(workdir, replaced(BASES[base], where, new))
    outcome = assert_refused(path)
    _located(outcome, path, where)


@FUZZ
@given(st.sampled_from(BOUNDED), st.sampled_from([-1, -(10**30), 0]))
def test_numbers_below_their_range_are_named(
    workdir: Path, case: tuple[str, Spot], new: int
) -> None:
    base, spot = case
    (floor,) = [m.ge for m in spot.info.metadata if isinstance(m, annotated_types.Ge)] or [0]
    if new >= floor:
        new = floor - 1
    path = write(workdir, replaced(BASES[base], spot.path, new))
    _located(assert_refused(path), path, spot.path)


@FUZZ
@given(st.sampled_from(BOUNDED), st.sampled_from([10**6, 2**63, 10**30, 10**4000]))
def test_huge_numbers_are_accepted_or_named(
    workdir: Path, case: tuple[str, Spot], new: int
) -> None:
    base, spot = case
    path = write(workdir, replaced(BASES[base], spot.path, new))
    outcome = check_config(path)
    assert_well_behaved(path, outcome)
    ceiling = [m.le for m in spot.info.metadata if isinstance(m, annotated_types.Le)]
    if ceiling and new > ceiling[0]:
        _located(outcome, path, spot.path)


BAD_DURATIONS = [
    "5 parsecs", "-1s", "1e3s", "1 s", "s", "", "1.5.5s", "10", "1 hour", "∞s",
    "9" * 400 + "d",  # overflows to infinity
    5, 0.5, True, None, "\x00", "1s\n2s",
]  # fmt: skip


@FUZZ
@given(st.sampled_from(DURATIONS), st.sampled_from(BAD_DURATIONS))
def test_bad_durations_are_named(workdir: Path, case: tuple[str, Spot], new: Any) -> None:
    base, spot = case
    if new is None and spot.nullable:
        new = "5 parsecs"
    path = write(workdir, replaced(BASES[base], spot.path, new))
    _located(assert_refused(path), path, spot.path)


@FUZZ
@given(
    st.sampled_from(URLS),
    st.sampled_from(["ftp://example.com/", "example.com/hook", "", "file:///etc/passwd", " "]),
)
def test_bad_urls_are_named(workdir: Path, case: tuple[str, Spot], new: str) -> None:
    base, spot = case
    path = write(workdir, replaced(BASES[base], spot.path, new))
    _located(assert_refused(path), path, spot.path)


@pytest.mark.parametrize("case", URLS, ids=lambda c: f"{c[0]}:{render(c[1].path)}")
def test_a_password_in_a_url_is_refused_without_showing_it(
    workdir: Path, case: tuple[str, Spot]
) -> None:
    base, spot = case
    scheme, rest = spot.value.split("://", 1)
    path = write(workdir, replaced(BASES[base], spot.path, f"{scheme}://ops:pw-4711@{rest}"))
    outcome = assert_refused(path, f"{render(spot.path)}: holds a password")
    assert "pw-4711" not in outcome.err


@FUZZ
@given(
    st.sampled_from(HOST_PORTS),
    st.sampled_from(
        ["host:99999", "[::1", "a:b:c", ":", "host:-1", "host:\uff11x", "", "h:" + "9" * 50]
    ),
)
def test_bad_addresses_are_named(workdir: Path, case: tuple[str, Spot], new: str) -> None:
    base, spot = case
    path = write(workdir, replaced(BASES[base], spot.path, new))
    _located(assert_refused(path), path, spot.path)


@FUZZ
@given(
    st.sampled_from(NAMES),
    st.sampled_from(["", "-lead", "a" * 64, "two words", "名前", "a\x00b", "\x1b[31mred", "a/b"]),
)
def test_bad_names_are_named(workdir: Path, case: tuple[str, Spot], new: str) -> None:
    base, spot = case
    path = write(workdir, replaced(BASES[base], spot.path, new))
    outcome = assert_refused(path)
    _located(outcome, path, spot.path)
    assert all("\x1b" not in line and "\x00" not in line for line in outcome.lines)


OBJECTS = [(b, p) for b, data in BASES.items() for p in objects(data)]


@FUZZ
@given(st.sampled_from(OBJECTS), st.sampled_from(["bogus", "Nodes", "interval ", "\x1b[2J"]))
def test_unknown_keys_are_named(workdir: Path, case: tuple[str, Path_], key: str) -> None:
    base, where = case
    data = deepcopy(BASES[base])
    get(data, where)[key] = {"x": 1}
    path = write(workdir, data)
    outcome = assert_refused(path)
    shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else None
    if shown is not None:
        assert any(f"{render((*where, key))}: unknown key" in line for line in outcome.lines)


NAMED_LISTS = {
    "sites": "sites: the name",
    "nodes": "nodes: the name",
    "services": "services: the name",
    "customers": "customers: the id",
}


@pytest.mark.parametrize("kind", NAMED_LISTS)
def test_duplicate_names_are_named(workdir: Path, kind: str) -> None:
    data = deepcopy(RICH)
    data[kind].append(data[kind][0])
    assert_refused(write(workdir, data), NAMED_LISTS[kind])


def test_duplicate_token_names_are_named(workdir: Path) -> None:
    data = deepcopy(RICH)
    data["api"]["tokens"].append(data["api"]["tokens"][0])
    assert_refused(write(workdir, data), "api.tokens: the name 'ops' is used more than once")


REFERENCES: list[Path_] = [
    ("nodes", 0, "site"),
    ("nodes", 1, "site"),
    ("sites", 0, "local_lb"),
    ("services", 0, "sites", 1),
    ("services", 0, "global_lb"),
    ("customers", 0, "services", 0),
    ("customers", 0, "plan"),
    ("api", "tokens", 1, "customer"),
    ("contingency_plans", "gold", "steps", 1, "notify", 0),
    ("contingency_plans", "gold", "on_resolve", 0),
    ("alerts", 0, "notify", 1),
    ("maintenance", 0, "services", 0),
]


@pytest.mark.parametrize("where", REFERENCES, ids=render)
def test_dangling_references_are_named(workdir: Path, where: Path_) -> None:
    get(RICH, where)  # the reference exists in the valid configuration
    path = write(workdir, replaced(RICH, where, "nowhere"))
    assert_refused(path, f"{render(where)}: ", "'nowhere'")


def test_wrong_kinds_of_load_balancer_are_named(workdir: Path) -> None:
    path = write(workdir, replaced(RICH, ("sites", 0, "local_lb"), "dns"))
    assert_refused(path, "sites[0].local_lb: 'dns' is a rfc2136, not a local one")
    path = write(workdir, replaced(RICH, ("services", 0, "global_lb"), "east-haproxy"))
    assert_refused(path, "services[0].global_lb: 'east-haproxy' is a haproxy, not a global one")


def test_zero_intervals_and_timeouts_are_refused(workdir: Path) -> None:
    probe = ("nodes", 0, "probes", 1)
    path = write(workdir, replaced(RICH, (*probe, "interval"), "0s"))
    assert_refused(path, "nodes[0].probes[1].interval: must be longer than 0s")
    path = write(workdir, replaced(RICH, ("defaults", "timeout"), "0ms"))
    assert_refused(path, "defaults.timeout: must be longer than 0s")
    path = write(workdir, replaced(RICH, ("failover", "cycle"), "0s"))
    assert_refused(path, "failover.cycle: must be longer than 0s")


# --- anything at all, anywhere ----------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    ["", " ", "\t", "\x00", "\x7f", "\x1b[31m", "\u202e", "\ud7ff", "名前", "😀", "a" * 5000,
     "~", "null", "yes", "0x1F", "1e400", "-0", ".nan", "2026-02-30", "!!python/object", "*a"]
)  # fmt: skip
ANYTHING = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=10**40)
    | st.floats()
    | st.text(max_size=30)
    | ODD_TEXT,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
EVERYWHERE = [(b, p) for b, data in BASES.items() for p, _ in values(data)]


@FUZZ_MORE
@given(st.sampled_from(EVERYWHERE), ANYTHING)
def test_any_value_anywhere_is_accepted_or_refused_cleanly(
    workdir: Path, case: tuple[str, Path_], new: Any
) -> None:
    base, where = case
    path = write(workdir, replaced(BASES[base], where, new))
    assert_well_behaved(path, check_config(path))


@FUZZ_MORE
@given(
    st.sampled_from(sorted(BASES)),
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 40), st.binary(max_size=6)),
        min_size=1,
        max_size=4,
    ),
)
def test_damaged_bytes_are_accepted_or_refused_cleanly(
    workdir: Path, base: str, edits: list[tuple[float, int, bytes]]
) -> None:
    """Splice random bytes over random stretches of a valid file (cut, insert, overwrite)."""
    raw = bytearray(yaml.dump(BASES[base], Dumper=DUMPER, sort_keys=False).encode())
    for where, cut, insert in edits:
        at = int(where * len(raw))
        raw[at : at + cut] = insert
    path = workdir / "damaged.yaml"
    path.write_bytes(bytes(raw))
    assert_well_behaved(path, check_config(path))


@FUZZ_MORE
@given(st.binary(max_size=200) | st.text(alphabet="{}[]:,-?&*!|>'\"#%@` \t\n\rab1.", max_size=80))
def test_raw_bytes_and_yaml_punctuation_are_refused_cleanly(workdir: Path, blob: Any) -> None:
    path = workdir / "blob.yaml"
    path.write_bytes(blob if isinstance(blob, bytes) else blob.encode())
    assert_well_behaved(path, check_config(path))


# --- YAML oddities, one by one ----------------------------------------------------------------


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append(f"nodes: *a{levels - 1}")
    return "\n".join(lines) + "\n"


ODDITIES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "the file is empty"),
    "only comments": (b"# nothing here\n\n", "the file is empty"),
    "a list": (b"- nodes\n- sites\n", "must hold a mapping of keys, not a list"),
    "a string": (b"nodes\n", "must hold a mapping of keys, not a string"),
    "invalid UTF-8": (b"timezone: UTC\nvantage: \xff\xfe\n", "line 2: not UTF-8 text (byte 0xff"),
    "UTF-16": ("timezone: UTC\n".encode("utf-16"), "not UTF-8 text"),
    "a NUL byte": (b"timezone: UT\x00C\n", "line 1: not valid YAML: the control character U+0000"),
    "python object tag": (
        b"state_dir: !!python/object/apply:os.system [echo pwned]\n",
        "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply",
    ),
    "python name tag": (b"timezone: !!python/name:os.system ''\n", "could not determine a"),
    "custom tag": (
        b"timezone: !vault abc\n",
        "could not determine a constructor for the tag '!vault'",
    ),
    "billion laughs": (_laughs(9).encode(), "a 'billion laughs' bomb?"),
    "a small alias fan-out": (_laughs(4).encode(), "nodes[0]: "),  # expanded, then refused
    "a recursive alias": (
        b"nodes: &n [*n]\n",
        "line 1: an alias refers to a value that contains it",
    ),
    "undefined alias": (b"nodes: *nowhere\n", "found undefined alias 'nowhere'"),
    "deep nesting": (b"labels: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper than 64"),
    "deep mapping": (b"a: " + b"{b: " * 200 + b"c" + b"}" * 200 + b"\n", "nested deeper than 64"),
    "a tab indent": (
        b"api:\n\tlisten: 127.0.0.1:1\n",
        "line 2, column 1: not valid YAML: found character '\\t'",
    ),
    "duplicate keys": (
        b"sites: []\nnodes: []\nsites: []\n",
        "line 3, column 1: not valid YAML: the key 'sites' appears twice",
    ),
    "duplicate nested keys": (
        b"api: {listen: '127.0.0.1:1', listen: '127.0.0.1:2'}\n",
        "the key 'listen' appears twice",
    ),
    "two documents": (
        b"sites: []\n---\nnodes: []\n",
        "line 2, column 1: not valid YAML: but found another document",
    ),
    "a 5000-digit integer": (
        b"defaults: {rise: " + b"9" * 5000 + b"}\n",
        "cannot read this value: Exceeds the limit (4300 digits)",
    ),
    "an impossible date": (
        b"maintenance: [{start: 2026-02-30, end: 2026-03-01, services: [w]}]\n",
        "cannot read this value: day is out of range",
    ),
    "an unhashable key": (b"? [a, b]\n: 1\n", "found unhashable key"),
    "a null key": (b"~: 1\n", "Keys should be strings"),
    "a boolean key": (b"yes: 1\n", "Keys should be strings"),
    "a binary value": (
        b"timezone: !!binary aGVsbG8=\n",
        "timezone: 'hello' is not an IANA time zone",
    ),
    "a bad merge": (b"api: {<<: 5}\n", "expected a mapping or list of mappings for merging"),
    "a set": (b"sites: !!set {a, b}\n", "sites[0]: Input should be a valid dictionary"),
    "unclosed quote": (b'timezone: "UTC\n', "found unexpected end of stream"),
    "a very long line": (
        b"vantage: " + b"x" * 100_000 + b"\n",
        "vantage: String should match pattern",
    ),
    "a control character in a key": (
        b'"\\e]0;pwned\\a": 1\n',
        r"['\x1b]0;pwned\x07']: unknown key",
    ),
}


@pytest.mark.parametrize("name", ODDITIES)
def test_yaml_oddities_are_refused_with_a_reason(workdir: Path, name: str) -> None:
    content, expected = ODDITIES[name]
    path = workdir / "odd.yaml"
    path.write_bytes(content)
    assert_refused(path, expected)


def test_a_merge_key_still_works_and_its_own_keys_override(workdir: Path) -> None:
    path = workdir / "merge.yaml"
    path.write_text(
        "nodes:\n"
        "  - {name: a, site: s, probes: [&tcp {type: tcp, address: '127.0.0.1:1'}]}\n"
        "  - {name: b, site: s, probes: [{<<: *tcp, address: '127.0.0.1:2', timeout: 2s}]}\n"
        "sites: [{name: s, address: 127.0.0.1}]\n"
    )
    assert_refused(path, "nodes[1].probes[0].timeout: 2s is not shorter than interval 1s")
    path.write_text(path.read_text().replace(", timeout: 2s", ""))
    outcome = check_config(path)
    assert outcome.code == 0, outcome.err


def test_a_file_larger_than_16_mib_is_refused_unread(workdir: Path) -> None:
    path = workdir / "huge.yaml"
    with path.open("wb") as file:
        file.write(b"# " + b"x" * (16 * 2**20) + b"\n")
    assert_refused(path, "larger than 16 MiB")
    path.unlink()


def test_a_missing_file_a_directory_and_a_non_directory_parent(workdir: Path) -> None:
    assert_refused(workdir / "absent.yaml", "cannot read: No such file or directory")
    assert_refused(workdir, "cannot read: Is a directory")
    plain = workdir / "plain.txt"
    plain.write_text("x")
    assert_refused(plain / "nodevigil.yaml", "cannot read: Not a directory")
    loop = workdir / "loop.yaml"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    assert_refused(loop, "cannot read: Too many levels of symbolic links")


# --- the real console script ------------------------------------------------------------------


async def _run(*args: str, cwd: Path) -> tuple[int, str, str]:
    """The installed ``nodevigil`` console script, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_console_script_refuses_bad_files_with_exit_1(tmp_path: Path) -> None:
    bad = write(tmp_path, replaced(RICH, ("defaults", "interval"), "5 parsecs"))
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "bomb.yaml").write_text(_laughs(9))
    hook = dict(BASES["example"])
    hook["notifiers"] = {
        "h": {"type": "webhook", "url": "http://127.0.0.1:1/", "secret_file": "gone"}
    }
    hook["state_dir"] = str(tmp_path / "state")
    hook["api"] = {"listen": "127.0.0.1:0"}
    (tmp_path / "hook.yaml").write_text(yaml.safe_dump(hook))
    script = str(NODEVIGIL)
    cases = {
        "schema": (
            [script, "check-config", "-c", str(bad)],
            f"{bad}: defaults.interval: '5 parsecs'",
        ),
        "bytes": ([script, "check-config", "-c", "binary.yaml"], "binary.yaml: line 1: not UTF-8"),
        "bomb": ([script, "check-config", "-c", "bomb.yaml"], "'billion laughs'"),
        "absent": (
            [script, "check-config", "-c", "absent.yaml"],
            "absent.yaml: cannot read: No such",
        ),
        "run": ([script, "run", "-c", str(bad)], f"{bad}: defaults.interval: '5 parsecs'"),
        "run secret": ([script, "run", "-c", "hook.yaml"], "notifiers.h: cannot read secret file"),
    }
    results = await asyncio.gather(*(_run(*argv, cwd=tmp_path) for argv, _ in cases.values()))
    for (name, (_, expected)), (code, out, err) in zip(cases.items(), results, strict=True):
        assert code == 1, (name, out, err)
        assert "Traceback" not in out + err, (name, err)
        assert expected in err, (name, err)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
async def test_an_unreadable_file_is_refused_by_the_console_script(tmp_path: Path) -> None:
    path = write(tmp_path, RICH)
    path.chmod(0)
    argv = [str(NODEVIGIL), "check-config", "-c", str(path)]
    if os.geteuid() == 0:  # root reads any file: drop the capabilities that let it
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    code, out, err = await _run(*argv, cwd=tmp_path)
    assert (code, out) == (1, ""), err
    assert err == f"{path}: cannot read: Permission denied\n"


# --- libyaml's C loader reads what the Python loader reads ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        *(path.read_text() for path in sorted((ROOT / "configs").glob("*.yaml"))),
        _laughs(4),  # aliases, expanded alike
        "a: &x {b: [1, 2.5, yes, ~, 2026-03-01, '0x10', 0x10]}\nc: {<<: *x, d: !!binary aGk=}\n",
    ],
)
def test_the_c_loader_reads_what_the_python_loader_reads(text: str) -> None:
    from nodevigil.core.config import yamlfile

    if yamlfile._CLoader is None:
        pytest.skip("PyYAML was built without libyaml")
    assert yamlfile._load(yamlfile._CLoader(text)) == yamlfile._python_load(text)
