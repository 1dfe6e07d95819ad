"""This process as one vantage point of several (``cluster.vantages``): it votes, and every
process combines everyone's votes into the verdict its controller decides on.

    local probes -> Monitor (private bus) -> vote in etcd (votes/<node>/<me>, own lease)
    etcd watch of votes/ -> VoteBook (quorum) -> node.up / node.down on the daemon's bus

Every process, leader or standby, watches the same votes and so holds the same combined
verdicts: a standby that takes over acts on them in its first cycle. A vote changes only when
the vantage's own verdict does (rise/fall thresholds, flap damping: monitor/verdict.py), so the
combined verdict moves within a watch round trip of the quorum agreeing.

A vantage that looks cut off itself (monitor/isolation.py: its canaries fail, or it sees many
nodes die that the others see up) votes ``unknown`` for every node until it sees the network
again, raises ``vantage.isolated`` and says so in ``/status`` and ``/api/v1/cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from monitor.canaries import Canaries
from monitor.isolation import IsolationJudge, IsolationSettings, VantageMetrics
from monitor.quorum import Combined, Vote, VoteBook
from monitor.sharded import MonitorView
from monitor.verdicts import NodeVerdictEvent, Verdict, VerdictChange
from nodevigil.core.clock import Clock
from nodevigil.core.config.schema import Cluster, Config, Isolation, split_host_port
from nodevigil.core.events import Event, EventBus
from nodevigil.state.etcd.votes import StoredVote, VoteStore

log = logging.getLogger(__name__)


def isolation_settings(cluster: Cluster) -> IsolationSettings:
    """The judge's settings from ``cluster.isolation``."""
    iso = cluster.isolation
    return IsolationSettings(
        share=iso.share, canary_share=iso.canary_share, min_nodes=iso.min_nodes
    )


def advertise_url(config: Config) -> str | None:
    """This host's API as the others reach it: ``cluster.advertise``, else ``api.listen``
    unless that is a wildcard address (then the others cannot know which address to use)."""
    if config.cluster is not None and config.cluster.advertise is not None:
        return config.cluster.advertise.rstrip("/")
    host, port = split_host_port(config.api.listen)
    if host in ("", "0.0.0.0", "::") or port == 0:
        return None
    scheme = "https" if config.api.tls is not None else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def default_canaries(cluster: Cluster, peers: Callable[[], Sequence[str]]) -> list[str]:
    """``cluster.isolation.canaries``, else the etcd endpoints and the other vantages' APIs.

    etcd's canary is its ``/version``, a static answer: ``/health`` costs etcd a raft
    proposal and a WAL fsync on every member per call (etcd 3.4), each vantage's every
    second, to learn nothing more (any answer proves the path).
    """
    if cluster.isolation.canaries is not None:
        return list(cluster.isolation.canaries)
    etcd = [f"{url.rstrip('/')}/version" for url in cluster.etcd.endpoints]
    return [*etcd, *(f"{api.rstrip('/')}/healthz" for api in peers())]


class Vantages:
    """Votes out, combined verdicts in; the controller's ``VerdictSource`` and the API's nodes.

    ``async with Vantages(...)``: subscribes to the vote store (before it starts, so the
    snapshot is seen whole), runs the canaries and the isolation judgement.
    """

    def __init__(
        self,
        *,
        config: Config,
        monitor: MonitorView,
        local_bus: EventBus,
        bus: EventBus,
        store: VoteStore,
        canaries: Callable[[], Sequence[str]],
        clock: Clock,
        registry: CollectorRegistry,
    ) -> None:
        cluster = config.cluster
        if cluster is None or not cluster.vantages:
            raise ValueError("cluster.vantages: needed to vote")
        self.me = config.vantage
        self._config = config
        self._sites = {n.name: n.site for n in config.nodes}
        self._monitor = monitor
        self._bus = bus
        self._store = store
        self._clock = clock
        self.book = VoteBook(cluster.vantages, cluster.quorum)
        self._judge = IsolationJudge(isolation_settings(cluster))
        self._isolation_reason = ""
        self._isolated_at = 0.0  # wall time isolation began (the label of the unknown votes)
        self._canary_targets = canaries
        self._canaries = self._new_canaries(cluster)
        self._canaries_running = False
        self._metrics = VantageMetrics(registry)
        self._task: asyncio.Task[None] | None = None
        local_bus.add_sink(self._on_local)
        store.subscribe(self._on_vote)
        registry.register(VoteTally(self.book))

    # --- running -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._canaries.__aenter__()
        self._canaries_running = True
        self._task = asyncio.create_task(self._judge_isolation(), name="vantage-isolation")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_canaries()

    @property
    def canary_timing(self) -> tuple[float, float]:
        """The running canaries' interval and timeout (a reload changes them at a check)."""
        return self._canary_timing

    def _isolation(self) -> Isolation:
        """``cluster.isolation`` of the configuration in force (it follows a reload)."""
        cluster = self._config.cluster
        assert cluster is not None
        return cluster.isolation

    def _new_canaries(self, cluster: Cluster) -> Canaries:
        iso = cluster.isolation
        self._canary_timing = (iso.interval, iso.timeout)
        return Canaries(
            self._canary_targets, interval=iso.interval, timeout=iso.timeout, clock=self._clock
        )

    async def _stop_canaries(self) -> None:
        if self._canaries_running:
            self._canaries_running = False
            await self._canaries.__aexit__(None, None, None)

    async def _judge_isolation(self) -> None:
        while True:
            await self._clock.sleep(self._isolation().interval)
            iso = self._isolation()
            if (iso.interval, iso.timeout) != self._canary_timing:
                # A reload changed how often and how long canaries are checked: new checkers
                # (their results are unknown, so ignored, until their first round ends).
                await self._stop_canaries()
                cluster = self._config.cluster
                assert cluster is not None
                self._canaries = self._new_canaries(cluster)
                await self._canaries.__aenter__()
                self._canaries_running = True
            try:
                self.check_isolation()
            except Exception:  # the judgement must never stop: log and look again next time
                log.exception("vantage: isolation check failed")

    def check_isolation(self) -> bool:
        """Judge once whether this vantage is cut off; act on a change. Returns isolated."""
        results = self._canaries.results()
        self._metrics.set_canaries(results)
        if self._monitor.overloaded():
            # As with the probes' failures: a canary that failed while this process's loop was
            # late proves nothing about the network (it may have timed out here, not out
            # there; its result does not say which), so none counts until the loop keeps up.
            results = {target: (None if ok is False else ok) for target, ok in results.items()}
        check = self._judge.check(
            canaries=results,
            own=self._monitor.verdicts(),
            others=self.book.others(self.me),
            canary_detail=self._canaries.detail(),
        )
        if check.isolated:
            self._isolation_reason = check.reason
        self._metrics.set_isolated(check.isolated)
        wall = self._clock.wall()
        event = check.to_event(vantage=self.me, at=wall)
        if event is None:
            return check.isolated
        if check.isolated:
            self._isolated_at = wall
            log.error(
                "vantage %s looks cut off, votes unknown for every node: %s", self.me, check.reason
            )
        else:
            log.warning("vantage %s sees the network again, votes again: %s", self.me, check.reason)
        self._bus.publish(event)
        self._revote_all()
        return check.isolated

    # --- votes out ---------------------------------------------------------------------------

    def _on_local(self, event: Event) -> None:
        """This vantage's own verdict changed: vote (unknown while cut off)."""
        if not isinstance(event, NodeVerdictEvent):
            self._bus.publish(event)  # anything else the monitor says goes on as it did
        elif event.subject in self._sites:
            vote = self._vote(event.subject, event.new, event.reason, event.probe, event.at)
            self._store.publish(vote)

    def _vote(
        self, node: str, verdict: Verdict, reason: str, probe: str | None, at: float
    ) -> StoredVote:
        if self._judge.isolated:
            return StoredVote(
                node=node,
                vantage=self.me,
                verdict=Verdict.UNKNOWN.value,
                at=self._isolated_at,
                reason=f"this vantage looks cut off: {self._isolation_reason}",
                isolated=True,
            )
        return StoredVote(
            node=node,
            vantage=self.me,
            verdict=verdict.value,
            at=at,
            reason=reason,
            probe=probe,
        )

    def _revote_all(self) -> None:
        """After entering or leaving isolation: every node's vote anew."""
        for node, verdict in self._monitor.verdicts().items():
            status = self._monitor.node_status(node) or {}
            since = status.get("since")
            at = since if isinstance(since, float) else self._clock.wall()
            self._store.publish(self._vote(node, verdict, _local_reason(status), None, at))

    # --- votes in ----------------------------------------------------------------------------

    def _on_vote(self, node: str, vantage: str, stored: StoredVote | None) -> None:
        """A vote changed in etcd (or vanished with its vantage's lease)."""
        if node not in self._sites:
            return  # a node this configuration does not hold (another config version)
        if stored is None:
            changed = self.book.withdraw(node, vantage)
        else:
            changed = self.book.cast(node, _vote_of(stored))
        if changed is not None:
            self._publish(changed)

    def _publish(self, combined: Combined) -> None:
        """The combined verdict moved: the event the controller, incidents and log follow."""
        old = combined.previous
        deciding = combined.deciding()
        probe = deciding[0].probe if len(deciding) == 1 else None
        change = VerdictChange(
            node=combined.node,
            site=self._sites[combined.node],
            old=old,
            new=combined.verdict,
            reason=combined.reason,
            probe=probe,
            at=self._clock.wall(),
            vantage=self.me,
        )
        if combined.verdict is Verdict.DOWN:
            log.warning("node %s is down: %s", combined.node, combined.reason)
        else:
            log.info("node %s is %s: %s", combined.node, combined.verdict.value, combined.reason)
        self._bus.publish(change.to_event())

    # --- configuration -----------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """A reload: new vantages or quorum, nodes added or removed."""
        cluster = config.cluster
        if cluster is None or not cluster.vantages:
            return  # the daemon refuses a reload that turns voting off (needs a restart)
        gone = set(self._sites) - {n.name for n in config.nodes}
        self._config = config
        self._sites = {n.name: n.site for n in config.nodes}
        # The judgement's thresholds at once; the canaries' timing at the next check.
        self._judge.settings = isolation_settings(cluster)
        for node in gone:
            self.book.forget(node)
            self._store.withdraw(node)
        for changed in self.book.reconfigure(cluster.vantages, cluster.quorum):
            self._publish(changed)

    # --- what the controller, the API and the status read ------------------------------------

    def verdicts(self) -> dict[str, Verdict]:
        """Every configured node's combined verdict (``unknown`` before enough votes)."""
        combined = self.book.verdicts()
        return {node: combined.get(node, Verdict.UNKNOWN) for node in self._sites}

    def node_names(self) -> list[str]:
        """The watched nodes, in configuration order."""
        return self._monitor.node_names()

    def node_status(self, name: str) -> dict[str, Any] | None:
        """The monitor's view of the node, its verdict replaced by the combined one, with
        every vantage's vote, its age and its evidence."""
        status = self._monitor.node_status(name)
        if status is None:
            return None
        combined = self.book.combined(name)
        wall = self._clock.wall()
        votes = self.book.votes(name)
        status["local_verdict"] = status["verdict"]
        status["verdict"] = self.book.verdict(name).value
        status["verdict_reason"] = None if combined is None else combined.reason
        status["quorum"] = self.book.quorum
        status["votes"] = [
            _vote_view(vantage, votes.get(vantage), wall) for vantage in self.book.vantages
        ]
        return status

    def view(self) -> dict[str, Any]:
        """Vantage health for ``/status`` and ``/api/v1/cluster``."""
        tally = self.book.tally()
        return {
            "me": self.me,
            "quorum": self.book.quorum,
            "isolated": self._judge.isolated,
            "isolation_reason": self._isolation_reason if self._judge.isolated else None,
            "canaries": [
                {"target": target, "up": up, "detail": self._canaries.detail().get(target)}
                for target, up in self._canaries.results().items()
            ],
            "votes_healthy": self._store.healthy,
            "vantages": [{"name": v, "votes": tally.get(v, {})} for v in self.book.vantages],
        }


class VoteTally:
    """``nodevigil_vantage_votes{vantage,verdict}``: counted once per scrape (vantages x 3
    series, whatever the fleet's size); a collector never raises during a scrape."""

    def __init__(self, book: VoteBook) -> None:
        self._book = book

    def collect(self) -> Iterator[Metric]:
        """One gauge family, counted now."""
        family = GaugeMetricFamily(
            "nodevigil_vantage_votes",
            "Nodes each vantage votes up, down or unknown for, as this process sees.",
            labels=["vantage", "verdict"],
        )
        for vantage, counts in self._book.tally().items():
            for verdict, count in counts.items():
                family.add_metric([vantage, verdict], float(count))
        yield family


def _vote_of(stored: StoredVote) -> Vote:
    try:
        verdict = Verdict(stored.verdict)
    except ValueError:
        verdict = Verdict.UNKNOWN
    return Vote(
        vantage=stored.vantage,
        verdict=verdict,
        at=stored.at,
        reason=stored.reason,
        probe=stored.probe,
        isolated=stored.isolated,
    )


def _vote_view(vantage: str, vote: Vote | None, wall: float) -> dict[str, Any]:
    if vote is None:
        return {"vantage": vantage, "vote": None, "age": None, "reason": "no vote (vantage away)"}
    return {
        "vantage": vantage,
        "vote": vote.verdict.value,
        "since": vote.at,
        "age": round(max(0.0, wall - vote.at), 3),
        "reason": vote.reason,
        "probe": vote.probe,
        "isolated": vote.isolated,
    }


def _local_reason(status: dict[str, Any]) -> str:
    """The evidence behind a local verdict, from the monitor's node view."""
    for probe in status.get("probes", []):
        last = probe.get("last")
        if last is not None and last.get("detail"):
            return f"{probe['name']}: {last['detail']}"
    return ""
