"""Whether this vantage point is itself cut off: pure logic, no I/O, no clock.

A vantage whose uplink breaks sees the whole fleet die. Two signs give it away, and either is
enough:

- **canaries**: targets that should always answer (by default the other vantages' APIs and the
  etcd endpoints, see ``monitor.canaries``) fail together: ``canary_share`` of those checked, or
  more;
- **disputed nodes**: more than ``share`` of the nodes this vantage judges, and at least
  ``min_nodes`` of them, are down here while another vantage votes them up and none votes them
  down. A mass outage the others confirm is not isolation; a node no other vantage votes on
  proves nothing either way.

The canaries catch a vantage cut off from everything (etcd too, so it cannot read the others'
votes); the disputed nodes catch one cut off from the nodes only. Hysteresis (``enter_after``
checks in a row that look isolated, ``leave_after`` clean ones) keeps one bad round from
flipping the state. While isolated the vantage votes ``unknown`` for every node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from monitor.metrics import VantageMetrics
from monitor.vantage_events import VantageIsolated, VantageRejoined
from monitor.verdicts import Verdict

# What a vantage needs to judge and report its own isolation, importable from here.
__all__ = [
    "Evidence",
    "IsolationCheck",
    "IsolationJudge",
    "IsolationSettings",
    "VantageIsolated",
    "VantageMetrics",
    "VantageRejoined",
]

SHOWN = 3  # failing canaries named in a reason; the rest are counted


@dataclass(frozen=True, slots=True)
class IsolationSettings:
    """When a vantage counts as cut off (``cluster.isolation`` in the configuration)."""

    share: float = 0.5  # more than this share of my judged nodes down that others see up
    canary_share: float = 0.5  # this share or more of my checked canaries failing
    min_nodes: int = 3  # fewer disputed nodes than this never count as isolation by share
    enter_after: int = 2  # consecutive checks that look isolated before declaring it
    leave_after: int = 2  # consecutive clean checks before recovering

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.share <= 1.0:
            problems.append(f"share: {self.share} is not between 0 and 1")
        if not 0.0 < self.canary_share <= 1.0:
            problems.append(f"canary_share: {self.canary_share} is not above 0 and at most 1")
        for name in ("min_nodes", "enter_after", "leave_after"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: {getattr(self, name)} is less than 1")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one check saw: the canaries and the nodes disputed by the other vantages."""

    canaries_checked: int
    canaries_failed: tuple[str, ...]  # targets, sorted
    nodes_judged: int  # nodes this vantage judges up or down
    disputed: tuple[str, ...]  # nodes down here, up for another vantage, down for none
    disputers: tuple[str, ...]  # the vantages voting those nodes up

    @classmethod
    def gather(
        cls,
        canaries: Mapping[str, bool | None],
        own: Mapping[str, Verdict],
        others: Mapping[str, Mapping[str, Verdict]],
    ) -> Evidence:
        """Count what ``check`` weighs (see ``IsolationJudge.check`` for the arguments)."""
        checked = [target for target, ok in canaries.items() if ok is not None]
        failed = sorted(target for target in checked if canaries[target] is False)
        judged = 0
        disputed: list[str] = []
        disputers: set[str] = set()
        for node, verdict in own.items():
            if verdict is Verdict.UNKNOWN:
                continue
            judged += 1
            if verdict is not Verdict.DOWN:
                continue
            votes = others.get(node, {})
            up = [vantage for vantage, vote in votes.items() if vote is Verdict.UP]
            if up and Verdict.DOWN not in votes.values():
                disputed.append(node)
                disputers.update(up)
        return cls(
            len(checked), tuple(failed), judged, tuple(sorted(disputed)), tuple(sorted(disputers))
        )

    def canaries_fail(self, settings: IsolationSettings) -> bool:
        """Whether ``canary_share`` or more of the checked canaries fail (one checked at least)."""
        checked = self.canaries_checked
        return checked > 0 and len(self.canaries_failed) / checked >= settings.canary_share

    def nodes_disputed(self, settings: IsolationSettings) -> bool:
        """Whether at least ``min_nodes``, and more than ``share``, of my nodes are disputed."""
        count = len(self.disputed)
        return count >= settings.min_nodes and count / self.nodes_judged > settings.share

    def describe_canaries(self, detail: Mapping[str, str]) -> str:
        """``2 of 3 canaries fail (tcp://etcd1:2379: connection refused; ...)``."""
        checked, failed = self.canaries_checked, self.canaries_failed
        if not checked:
            return "no canary checked"
        if not failed:
            return f"{checked} of {checked} " + (
                "canary answers" if checked == 1 else "canaries answer"
            )
        named = [f"{t}: {detail[t]}" if detail.get(t) else t for t in failed[:SHOWN]]
        more = f"; and {len(failed) - SHOWN} more" if len(failed) > SHOWN else ""
        noun = "canary fails" if checked == 1 else "canaries fail"
        return f"{len(failed)} of {checked} {noun} ({'; '.join(named)}{more})"

    def describe_nodes(self) -> str:
        """``sees 40 of 60 nodes down that ops-2, ops-3 see up``."""
        who = ", ".join(self.disputers) if self.disputers else "the other vantages"
        see = "sees" if len(self.disputers) == 1 else "see"
        return f"sees {len(self.disputed)} of {self.nodes_judged} nodes down that {who} {see} up"


@dataclass(frozen=True, slots=True)
class IsolationCheck:
    """The outcome of one check: the state, whether it just changed, and why."""

    isolated: bool
    changed: bool  # True on the check that entered or left isolation
    reason: str  # human words: what the canaries and the other vantages' votes showed
    looks_isolated: bool = False  # this check on its own (before the hysteresis)
    evidence: Evidence | None = None

    def to_event(self, *, vantage: str, at: float) -> VantageIsolated | VantageRejoined | None:
        """The event to publish when the state changed (``subject`` is the vantage), else None."""
        if not self.changed:
            return None
        if not self.isolated:
            return VantageRejoined(subject=vantage, at=at, vantage=vantage, reason=self.reason)
        seen = self.evidence
        return VantageIsolated(
            subject=vantage,
            at=at,
            vantage=vantage,
            reason=self.reason,
            canaries_failed=len(seen.canaries_failed) if seen else 0,
            canaries_checked=seen.canaries_checked if seen else 0,
            nodes_disputed=len(seen.disputed) if seen else 0,
            nodes_judged=seen.nodes_judged if seen else 0,
        )


class IsolationJudge:
    """Decides, check after check, whether this vantage is cut off (with hysteresis)."""

    def __init__(self, settings: IsolationSettings) -> None:
        self.settings = settings
        self._isolated = False
        self._bad = 0  # consecutive checks that looked isolated
        self._good = 0  # consecutive checks that looked clean

    @property
    def isolated(self) -> bool:
        """Whether this vantage counts as cut off now (it should vote ``unknown`` for all)."""
        return self._isolated

    def check(
        self,
        *,
        canaries: Mapping[str, bool | None],
        own: Mapping[str, Verdict],
        others: Mapping[str, Mapping[str, Verdict]],
        canary_detail: Mapping[str, str] | None = None,
    ) -> IsolationCheck:
        """Weigh one round of evidence.

        ``canaries``: target -> answered (True), failed (False), not checked yet (None, ignored);
        ``own``: node -> this vantage's local verdict; ``others``: node -> {other vantage -> its
        live vote} (the other vantages only); ``canary_detail``: target -> last error, named in
        the reason.
        """
        settings = self.settings
        seen = Evidence.gather(canaries, own, others)
        hits = []
        if seen.canaries_fail(settings):
            hits.append(seen.describe_canaries(canary_detail or {}))
        if seen.nodes_disputed(settings):
            hits.append(seen.describe_nodes())
        looks = bool(hits)
        if looks:
            self._bad, self._good = self._bad + 1, 0
        else:
            self._bad, self._good = 0, self._good + 1
        changed = False
        if not self._isolated and self._bad >= settings.enter_after:
            self._isolated = changed = True
        elif self._isolated and self._good >= settings.leave_after:
            self._isolated, changed = False, True
        clean = f"{seen.describe_canaries(canary_detail or {})}; {seen.describe_nodes()}"
        if looks:
            reason = "; ".join(hits)
            if not self._isolated:
                reason = f"looks isolated ({self._bad} of {settings.enter_after} checks): {reason}"
        else:
            reason = clean
            if self._isolated:
                reason = f"looks clean ({self._good} of {settings.leave_after} checks): {reason}"
        return IsolationCheck(self._isolated, changed, reason, looks, seen)
