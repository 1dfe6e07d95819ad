"""From probe results to a node's verdict: rise/fall thresholds, require policy, flap damping.

Pure logic: every method takes the monotonic time it should consider ``now``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from monitor.probes.base import ProbeResult
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import FlapDamping


@dataclass(slots=True)
class ProbeTrack:
    """One probe's consecutive counters and its own thresholded state."""

    name: str
    state: Verdict = Verdict.UNKNOWN
    successes: int = 0
    failures: int = 0
    last: ProbeResult | None = None

    def observe(self, result: ProbeResult, rise: int, fall: int) -> bool:
        """Count one result; return True when the probe's state changed."""
        self.last = result
        if result.ok is None:
            return False  # inconclusive: move nothing
        if result.ok:
            self.successes += 1
            self.failures = 0
            new = Verdict.UP if self.successes >= rise else self.state
        else:
            self.failures += 1
            self.successes = 0
            decisive = result.decisive or self.failures >= fall
            new = Verdict.DOWN if decisive else self.state
        if new is self.state:
            return False
        self.state = new
        return True


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a node's verdict with the evidence behind it."""

    old: Verdict
    new: Verdict
    reason: str
    probe: str | None
    flapping: bool


@dataclass(slots=True)
class NodeJudge:
    """Turns one node's probe results into its verdict."""

    probes: dict[str, ProbeTrack]
    rise: int
    fall: int
    require: str
    flap: FlapDamping
    verdict: Verdict = Verdict.UNKNOWN
    since: float | None = None  # monotonic time the verdict was reached
    raw: Verdict = Verdict.UNKNOWN
    raw_since: float = 0.0
    flapping: bool = False
    changes: deque[float] = field(default_factory=deque)

    @classmethod
    def create(
        cls, probe_names: list[str], *, rise: int, fall: int, require: str, flap: FlapDamping
    ) -> NodeJudge:
        """A judge for a new node: every probe unknown."""
        return cls(
            probes={name: ProbeTrack(name) for name in probe_names},
            rise=rise,
            fall=fall,
            require=require,
            flap=flap,
        )

    def observe(self, probe: str, result: ProbeResult, now: float) -> Transition | None:
        """Take one probe result; return the verdict transition it causes, if any."""
        track = self.probes[probe]
        if not track.observe(result, self.rise, self.fall):
            return self.tick(now)
        return self._reconsider(now, track)

    def tick(self, now: float) -> Transition | None:
        """Re-judge with no new result: ends a flap hold once the node has been stable."""
        if self.flapping and self.raw is Verdict.UP and now - self.raw_since >= self.flap.hold:
            self.flapping = False
            self.changes.clear()
            return self._settle(now, "stable for the flap hold time", None)
        return None

    def _combined(self) -> Verdict:
        states = [t.state for t in self.probes.values()]
        if self.require == "any":
            if Verdict.UP in states:
                return Verdict.UP
            return Verdict.DOWN if all(s is Verdict.DOWN for s in states) else Verdict.UNKNOWN
        if Verdict.DOWN in states:
            return Verdict.DOWN
        return Verdict.UP if all(s is Verdict.UP for s in states) else Verdict.UNKNOWN

    def _reconsider(self, now: float, track: ProbeTrack) -> Transition | None:
        raw = self._combined()
        if raw is not self.raw:
            if {raw, self.raw} == {Verdict.UP, Verdict.DOWN}:
                self.changes.append(now)
            self.raw, self.raw_since = raw, now
        while self.changes and now - self.changes[0] > self.flap.window:
            self.changes.popleft()
        if not self.flapping and len(self.changes) > self.flap.max_changes:
            self.flapping = True
        detail = track.last.detail if track.last else ""
        counted = track.successes if track.state is Verdict.UP else track.failures
        word = "success" if track.state is Verdict.UP else "failure"
        plural = {"success": "successes", "failure": "failures"}[word] if counted != 1 else word
        reason = f"{track.name}: {detail} ({counted} consecutive {plural})"
        if self.flapping:
            reason = f"flapping ({len(self.changes)} changes in {self.flap.window:g}s); {reason}"
        return self._settle(now, reason, track.name)

    def _settle(self, now: float, reason: str, probe: str | None) -> Transition | None:
        new = Verdict.DOWN if self.flapping else self.raw
        if new is self.verdict:
            return None
        old, self.verdict, self.since = self.verdict, new, now
        return Transition(old, new, reason, probe, self.flapping)
