"""The monitor's per-node series: one verdict series a node, and a scrape that renders them
from prepared lines (``nodevigil.core.exposition``) exactly as prometheus_client would."""

from __future__ import annotations

import math
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.metrics import MonitorMetrics
from monitor.verdicts import Verdict
from nodevigil.app.metrics import DaemonMetrics
from nodevigil.core.exposition import LeanGauge, exposition

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: bytes) -> Samples:
    """Every sample of an exposition: ``{(name, sorted labels): value}``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """One sample's value, read as tests read prometheus_client's own metrics."""
    return registry.get_sample_value(name, labels)


def test_one_verdict_series_per_node_absent_while_unknown() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.set_verdict("a", "s", Verdict.UNKNOWN)
    metrics.set_verdict("b", "s", Verdict.UNKNOWN)
    assert value(registry, "nodevigil_node_up", node="a", site="s") is None
    assert value(registry, "nodevigil_nodes", site="s", verdict="unknown") == 2
    assert value(registry, "nodevigil_nodes", site="s", verdict="up") == 0

    metrics.set_verdict("a", "s", Verdict.UP)
    metrics.set_verdict("b", "s", Verdict.DOWN)
    assert value(registry, "nodevigil_node_up", node="a", site="s") == 1
    assert value(registry, "nodevigil_node_up", node="b", site="s") == 0
    counts = {
        v.value: value(registry, "nodevigil_nodes", site="s", verdict=v.value) for v in Verdict
    }
    assert counts == {"unknown": 0, "up": 1, "down": 1}

    # A node that moves to another site leaves nothing behind in the old one.
    metrics.set_verdict("b", "t", Verdict.UP)
    assert value(registry, "nodevigil_node_up", node="b", site="s") is None
    assert value(registry, "nodevigil_node_up", node="b", site="t") == 1
    assert value(registry, "nodevigil_nodes", site="s", verdict="down") == 0

    metrics.forget_node("a", "s", ["http"])
    assert value(registry, "nodevigil_nodes", site="s", verdict="up") is None  # site emptied
    assert value(registry, "nodevigil_node_up", node="a", site="s") is None
    text = exposition(registry).decode()
    assert "nodevigil_node_verdict" not in text
    assert 'nodevigil_node_up{node="b",site="t"} 1.0\n' in text


def test_a_node_with_one_probe_has_three_series() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    empty = samples(exposition(registry))
    metrics.set_verdict("a", "s", Verdict.UP)
    metrics.probe_success.labels("a", "http").set(1)
    metrics.probe_duration.labels("a", "http").set(0.0123)
    per_site = samples(exposition(registry))
    metrics.set_verdict("b", "s", Verdict.UP)
    metrics.probe_success.labels("b", "http").set(1)
    metrics.probe_duration.labels("b", "http").set(0.0123)
    grown = samples(exposition(registry))
    assert len(grown) - len(per_site) == 3  # node_up, probe_success, probe_duration_seconds
    assert len(per_site) - len(empty) == 3 + 3  # and the site's three counts, once


def test_exposition_says_what_generate_latest_says() -> None:
    registry = CollectorRegistry()
    DaemonMetrics(registry)
    metrics = MonitorMetrics(registry)
    for i in range(50):
        name = f"n{i}"
        metrics.set_verdict(name, f"s{i % 3}", Verdict.UNKNOWN)
        metrics.set_verdict(name, f"s{i % 3}", Verdict.UP if i % 4 else Verdict.DOWN)
        metrics.probe_success.labels(name, "http").set(i % 2)
        metrics.probe_duration.labels(name, "http").set(i * 0.00123456789)
    metrics.set_verdict('we"ird\\node\n', "s0", Verdict.UP)  # escaped as generate_latest does
    metrics.probe_duration.labels("inf", "http").set(math.inf)
    ours, theirs = samples(exposition(registry)), samples(generate_latest(registry))
    assert ours.keys() == theirs.keys()
    for key, expected in theirs.items():  # durations are written to the microsecond
        assert ours[key] == pytest.approx(expected, abs=1e-6), key
    # A scrape renders every family once, the lean ones included.
    body = exposition(registry).decode()
    assert body.count("# TYPE nodevigil_node_up gauge\n") == 1
    assert body.count("# TYPE nodevigil_probe_success gauge\n") == 1


def test_a_scrape_reuses_what_did_not_change() -> None:
    registry = CollectorRegistry()
    gauge = LeanGauge("x_up", "Test.", ["node"], registry=registry)
    gauge.labels("a").set(1)
    first = gauge.render()
    gauge.labels("a").set(1)  # the same value: nothing to render again
    assert gauge.render() is first
    gauge.labels("a").set(0)
    assert gauge.render() == '# HELP x_up Test.\n# TYPE x_up gauge\nx_up{node="a"} 0.0\n'
    gauge.remove("a")
    assert gauge.render() == "# HELP x_up Test.\n# TYPE x_up gauge\n"
    with pytest.raises(KeyError):
        gauge.remove("a")
    with pytest.raises(ValueError, match="expected labels"):
        gauge.labels("a", "b")


def test_exposition_from_a_thread_while_the_loop_writes() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                samples(exposition(registry))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for i in range(20_000):
            name = f"n{i % 500}"
            metrics.probe_duration.labels(name, "http").set(i * 1e-6)
            if i % 7 == 0:
                metrics.set_verdict(name, "s", Verdict.DOWN if i % 2 else Verdict.UP)
            if i % 1000 == 999:
                metrics.forget_node(name, "s", ["http"])
    finally:
        stop.set()
        thread.join()
    assert not errors
    # The last scrape after the writes shows the last values.
    final = samples(exposition(registry))
    assert final == pytest.approx(samples(generate_latest(registry)), abs=1e-6)
