"""The monitor's Prometheus metrics, registered on a registry passed in."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.heartbeat import FIGURES
from monitor.verdicts import Verdict
from nodevigil.core.exposition import LeanGauge
from nodevigil.core.resources import PROBES, LocalTrouble

if TYPE_CHECKING:
    from monitor.heartbeat import HeartbeatBoard

PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class MonitorMetrics:
    """Probe results and durations, verdicts and their changes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Per probe of a node, as blackbox_exporter users expect: the latest conclusive result
        # and its duration, two series per probe. Counts and the distribution are kept per
        # probe type, never per node: they would multiply the series of a 10,000-node fleet.
        # Series that grow with the fleet are lean gauges: a scrape formats only what changed.
        self.probe_success = LeanGauge(
            "nodevigil_probe_success",
            "1 if the probe's latest conclusive result was a success, 0 if a failure.",
            ["node", "probe"],
            registry=registry,
        )
        self.probe_duration = LeanGauge(
            "nodevigil_probe_duration_seconds",
            "How long the probe's latest conclusive result took.",
            ["node", "probe"],
            registry=registry,
            decimals=6,  # microseconds: the digits beyond mean nothing for a probe
        )
        self.probe_results = Counter(
            "nodevigil_probe_results",
            "Probe results by probe type and outcome (success, failure, inconclusive).",
            ["type", "result"],
            registry=registry,
        )
        self.probe_type_duration = Histogram(
            "nodevigil_probe_duration_by_type_seconds",
            "How long probes took, by probe type.",
            ["type"],
            buckets=PROBE_BUCKETS,
            registry=registry,
        )
        # One series per node, as blackbox_exporter's probe_success: 1 up, 0 down, absent while
        # the node is new (unknown). The counts by verdict, unknown included, are per site.
        self.node_up = LeanGauge(
            "nodevigil_node_up",
            "1 while the node's verdict is up, 0 while it is down (absent while unknown).",
            ["node", "site"],
            registry=registry,
        )
        self.nodes = Gauge(
            "nodevigil_nodes",
            "Nodes by site and verdict (unknown, up, down).",
            ["site", "verdict"],
            registry=registry,
        )
        self._verdicts: dict[str, tuple[str, Verdict]] = {}  # node -> (site, verdict) shown
        self._site_nodes: dict[str, int] = {}  # site -> its nodes with a verdict shown
        self.verdict_changes = Counter(
            "nodevigil_verdict_changes",
            "Node verdict changes by site and new verdict.",
            ["site", "verdict"],
            registry=registry,
        )
        self.probes_skipped = Counter(
            "nodevigil_probes_skipped",
            "Probe rounds skipped because the monitor was running late (load shedding).",
            registry=registry,
        )
        self.overloaded = Gauge(
            "nodevigil_monitor_overloaded",
            "1 while the monitor's event loop is too late for failures to be trusted.",
            registry=registry,
        )
        self.nodes_flapping = Gauge(
            "nodevigil_nodes_flapping",
            "Nodes held down by flap damping.",
            registry=registry,
        )
        # Backlogs: each stays near a constant under a steady load; growth means overload.
        self.probe_connections = Gauge(
            "nodevigil_probe_connections",
            "HTTP probe connections: idle (pooled), connecting, orphaned (a late answer is read).",
            ["state"],
            registry=registry,
        )
        self.probe_rounds = Gauge(
            "nodevigil_probe_rounds_running",
            "Probe rounds under way now.",
            registry=registry,
        )
        registry.register(LocalErrorCollector(PROBES))
        # Registered with the monitor's so every process exports them (0 on a single host).
        self.vantage = VantageMetrics(registry)

    def set_verdict(self, node: str, site: str, verdict: Verdict) -> None:
        """Show ``verdict`` as the node's current one."""
        shown = self._verdicts.get(node)
        if shown is not None and shown[0] != site:  # moved to another site
            self._drop_verdict(node)
            shown = None
        if shown is not None:
            self.nodes.labels(site, shown[1].value).dec()
        else:
            if site not in self._site_nodes:  # a new site: its three counts, from 0
                for v in Verdict:
                    self.nodes.labels(site, v.value)
            self._site_nodes[site] = self._site_nodes.get(site, 0) + 1
        self._verdicts[node] = (site, verdict)
        self.nodes.labels(site, verdict.value).inc()
        if verdict is Verdict.UNKNOWN:
            with contextlib.suppress(KeyError):
                self.node_up.remove(node, site)
        else:
            self.node_up.labels(node, site).set(1 if verdict is Verdict.UP else 0)

    def _drop_verdict(self, node: str) -> None:
        """Take the node's shown verdict out of the counts and drop its series."""
        shown = self._verdicts.pop(node, None)
        if shown is None:
            return
        site, verdict = shown
        with contextlib.suppress(KeyError):
            self.node_up.remove(node, site)
        self.nodes.labels(site, verdict.value).dec()
        left = self._site_nodes[site] = self._site_nodes[site] - 1
        if not left:  # a site without nodes leaves no series behind
            del self._site_nodes[site]
            for v in Verdict:
                with contextlib.suppress(KeyError):
                    self.nodes.remove(site, v.value)

    def forget_node(self, node: str, site: str, probes: Iterable[str] = ()) -> None:
        """Drop a removed node's series (its verdict's, and those of ``probes``)."""
        self._drop_verdict(node)
        for probe in probes:
            for family in (self.probe_success, self.probe_duration):
                with contextlib.suppress(KeyError):
                    family.remove(node, probe)


class VantageMetrics:
    """Whether this vantage is cut off (``monitor.isolation``), and each canary's last check.

    One set of gauges per registry, however many times this is made: the monitor's metrics
    make it, so every process exports ``nodevigil_vantage_isolated`` (0 on a single host), and
    the cluster wiring that sets the gauges gets the same ones.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        shared = _VANTAGE_GAUGES.get(registry)
        if shared is None:
            shared = _VANTAGE_GAUGES[registry] = _VantageGauges(registry)
        self._shared = shared
        self.isolated = shared.isolated
        self.canary_up = shared.canary_up

    def set_isolated(self, isolated: bool) -> None:
        """Show the isolation state."""
        self.isolated.set(1 if isolated else 0)

    def set_canaries(self, results: Mapping[str, bool | None]) -> None:
        """Show the canaries' last results; a target gone or not judged loses its series."""
        judged = {target: ok for target, ok in results.items() if ok is not None}
        for gone in self._shared.shown - judged.keys():
            with contextlib.suppress(KeyError):
                self.canary_up.remove(gone)
        for target, ok in judged.items():
            self.canary_up.labels(target).set(1 if ok else 0)
        self._shared.shown = set(judged)


class _VantageGauges:
    """The gauges behind every VantageMetrics of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.isolated = Gauge(
            "nodevigil_vantage_isolated",
            "1 while this vantage looks cut off and votes unknown for every node, else 0.",
            registry=registry,
        )
        self.canary_up = Gauge(
            "nodevigil_vantage_canary_up",
            "1 if the canary answered its last check, 0 if it failed (absent until judged).",
            ["target"],
            registry=registry,
        )
        self.shown: set[str] = set()  # the targets with a series


_VANTAGE_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, _VantageGauges] = (
    weakref.WeakKeyDictionary()
)


# The agent sends percentages (its limits are in percent too); Prometheus wants base units.
AGENT_SERIES: dict[str, tuple[str, str, float]] = {
    "cpu_percent": (
        "nodevigil_agent_cpu_ratio",
        "The node's CPU use in its agent's latest heartbeat (0 to 1).",
        0.01,
    ),
    "memory_percent": (
        "nodevigil_agent_memory_ratio",
        "The share of the node's memory in use in its agent's latest heartbeat (0 to 1).",
        0.01,
    ),
    "disk_percent": (
        "nodevigil_agent_disk_ratio",
        "The share of the node's disk in use in its agent's latest heartbeat (0 to 1).",
        0.01,
    ),
    "load1": (
        "nodevigil_agent_load1",
        "The node's one-minute load average in its agent's latest heartbeat.",
        1.0,
    ),
}
assert set(AGENT_SERIES) == set(FIGURES), "every heartbeat figure has a series"


class AgentCollector(Collector):
    """Agent figures from the latest heartbeats; reads the board at scrape time, never raises."""

    def __init__(self, board: HeartbeatBoard) -> None:
        self._board = board

    def collect(self) -> Iterator[Metric]:
        """One gauge per figure, labelled by node."""
        families = {
            key: GaugeMetricFamily(name, help_text, labels=["node"])
            for key, (name, help_text, _) in AGENT_SERIES.items()
        }
        seen = GaugeMetricFamily(
            "nodevigil_agent_last_heartbeat_timestamp_seconds",
            "Wall time of the latest heartbeat from each node agent.",
            labels=["node"],
        )
        dropped = CounterMetricFamily(
            "nodevigil_mqtt_payloads_dropped",
            "MQTT payloads refused since start, by reason: topic, too_large, malformed, "
            "unknown_agent, unsigned, bad_mac, wrong_node, replayed, clock_skew, "
            "unknown_connection.",
            labels=["reason"],
        )
        link = GaugeMetricFamily(
            "nodevigil_mqtt_connected", "1 while the daemon is connected to the MQTT broker."
        )
        # Only configured agents are on the board: a client cannot add series here.
        for agent, state in list(self._board.agents.items()):
            for key, value in state.figures.items():
                families[key].add_metric([agent], value * AGENT_SERIES[key][2])
            if state.last_wall is not None:
                seen.add_metric([agent], state.last_wall)
        for reason, count in list(self._board.dropped.items()):
            dropped.add_metric([reason], count)
        link.add_metric([], 1.0 if self._board.connected else 0.0)
        yield from families.values()
        yield seen
        yield dropped
        yield link


class LocalErrorCollector(Collector):
    """Probe tries that failed for want of nodevigil's own resources (EMFILE, ENOBUFS...),
    by errno; such tries never count against a node. Never raises during a scrape."""

    def __init__(self, trouble: LocalTrouble) -> None:
        self._trouble = trouble

    def collect(self) -> Iterator[Metric]:
        """One counter, labelled by errno name."""
        family = CounterMetricFamily(
            "nodevigil_probe_local_errors",
            "Probe tries that failed for want of nodevigil's own resources (inconclusive).",
            labels=["errno"],
        )
        for name, count in sorted(list(self._trouble.counts.items())):
            family.add_metric([name], count)
        yield family
