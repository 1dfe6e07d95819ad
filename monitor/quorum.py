"""One verdict from several vantage points: a node is down when a quorum of them say so.

Each vantage (a nodevigil process in its own network) judges every node with its own probes
and thresholds and casts a **vote**: ``up``, ``down`` or ``unknown`` (not judged yet, or the
vantage looks cut off itself). ``VoteBook`` combines the live votes into the verdict the
controller acts on:

- fewer than ``quorum`` votes that are ``up`` or ``down`` (*live* votes): the node keeps its
  last combined verdict; it is never drained, nor restored, for lack of votes;
- at least ``quorum`` of them ``down``: ``down``;
- otherwise ``up`` (enough vantages see it, and not enough of them see it dead).

``quorum`` counts the configured vantages, never the live ones (default: a majority of the
configured), so one vantage that sees everything die cannot drain anything, and two vantages
of three are enough to decide while the third is dead or cut off. Votes of vantages that are
not configured are ignored. Pure logic: no I/O, no clock; ``at`` is a wall-time label only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from monitor.verdicts import Verdict


def majority(vantages: int) -> int:
    """The default quorum: more than half of the configured vantages."""
    return vantages // 2 + 1


@dataclass(frozen=True, slots=True)
class Vote:
    """What one vantage says of one node, with its evidence."""

    vantage: str
    verdict: Verdict
    at: float  # wall time the vantage's verdict took this value (a label only)
    reason: str
    probe: str | None = None
    isolated: bool = False  # unknown because the vantage looks cut off

    def describe(self) -> str:
        """``ops-1: down (http: connection refused)``."""
        why = "looks cut off" if self.isolated else self.reason
        return f"{self.vantage}: {self.verdict.value}" + (f" ({why})" if why else "")


@dataclass(frozen=True, slots=True)
class Combined:
    """A node's combined verdict and the votes that made it."""

    node: str
    verdict: Verdict
    votes: tuple[Vote, ...]  # every counted vote (configured vantages), in configuration order
    reason: str
    held: bool  # fewer than quorum live votes: the last verdict was kept
    previous: Verdict = Verdict.UNKNOWN  # the combined verdict before this one

    def deciding(self) -> tuple[Vote, ...]:
        """The votes that agree with the verdict (the ones the decision line names)."""
        return tuple(v for v in self.votes if v.verdict is self.verdict)


class VoteBook:
    """Every vantage's vote per node and the combined verdicts; see the module docs."""

    def __init__(self, vantages: Sequence[str], quorum: int | None = None) -> None:
        self._votes: dict[str, dict[str, Vote]] = {}
        self._combined: dict[str, Combined] = {}
        self._vantages: tuple[str, ...] = ()
        self._quorum = 1
        self.reconfigure(vantages, quorum)

    @property
    def quorum(self) -> int:
        """``down`` votes needed to call a node down, and live votes needed to decide at all."""
        return self._quorum

    @property
    def vantages(self) -> tuple[str, ...]:
        """The configured vantages, in configuration order."""
        return self._vantages

    def reconfigure(self, vantages: Sequence[str], quorum: int | None = None) -> list[Combined]:
        """Use new vantages/quorum; returns the nodes whose combined verdict changed."""
        if not vantages or len(set(vantages)) != len(vantages):
            raise ValueError("vantages: must be a non-empty list of distinct names")
        chosen = majority(len(vantages)) if quorum is None else quorum
        if not 1 <= chosen <= len(vantages):
            raise ValueError(f"quorum: must be between 1 and {len(vantages)}, not {chosen}")
        self._vantages, self._quorum = tuple(vantages), chosen
        return [c for node in list(self._votes) if (c := self._recombine(node)) is not None]

    # --- votes in -------------------------------------------------------------------------

    def cast(self, node: str, vote: Vote) -> Combined | None:
        """Record ``vote``; the new combined verdict when it changed, else None."""
        self._votes.setdefault(node, {})[vote.vantage] = vote
        return self._recombine(node)

    def withdraw(self, node: str, vantage: str) -> Combined | None:
        """A vantage's vote is gone (its lease expired, or it withdrew it)."""
        votes = self._votes.get(node)
        if votes is None or votes.pop(vantage, None) is None:
            return None
        return self._recombine(node)

    def forget(self, node: str) -> None:
        """The node is no longer configured: drop its votes and verdict."""
        self._votes.pop(node, None)
        self._combined.pop(node, None)

    # --- what the controller and the API read ---------------------------------------------

    def verdicts(self) -> dict[str, Verdict]:
        """Every node's combined verdict (nodes nobody voted on yet are absent)."""
        return {node: c.verdict for node, c in self._combined.items()}

    def verdict(self, node: str) -> Verdict:
        """One node's combined verdict (``unknown`` before any decision)."""
        combined = self._combined.get(node)
        return Verdict.UNKNOWN if combined is None else combined.verdict

    def combined(self, node: str) -> Combined | None:
        """One node's combined verdict with its votes, or None before any vote."""
        return self._combined.get(node)

    def votes(self, node: str) -> Mapping[str, Vote]:
        """Every vote for ``node``, configured or not, by vantage."""
        return dict(self._votes.get(node, {}))

    def others(self, me: str) -> dict[str, dict[str, Verdict]]:
        """node -> {other configured vantage -> its live verdict}: what the others see."""
        wanted = set(self._vantages) - {me}
        table: dict[str, dict[str, Verdict]] = {}
        for node, votes in self._votes.items():
            seen: dict[str, Verdict] = {
                v: vote.verdict
                for v, vote in votes.items()
                if v in wanted and vote.verdict is not Verdict.UNKNOWN
            }
            if seen:
                table[node] = seen
        return table

    def tally(self) -> dict[str, dict[str, int]]:
        """vantage -> {verdict -> nodes}: each vantage's votes counted (dashboards, status)."""
        counts = {v: {verdict.value: 0 for verdict in Verdict} for v in self._vantages}
        for votes in self._votes.values():
            for vantage, vote in votes.items():
                if vantage in counts:
                    counts[vantage][vote.verdict.value] += 1
        return counts

    # --- combining -------------------------------------------------------------------------

    def _recombine(self, node: str) -> Combined | None:
        votes = self._votes.get(node, {})
        counted = tuple(votes[v] for v in self._vantages if v in votes)
        new = combine(node, counted, quorum=self._quorum, last=self.verdict(node))
        old = self._combined.get(node)
        if old is not None:
            new = replace(
                new, previous=old.verdict if new.verdict is not old.verdict else old.previous
            )
        self._combined[node] = new
        if old is None:
            return new if new.verdict is not Verdict.UNKNOWN else None
        return new if new.verdict is not old.verdict else None


def combine(node: str, votes: Iterable[Vote], *, quorum: int, last: Verdict) -> Combined:
    """The rule of the module docs, for one node's counted votes."""
    counted = tuple(votes)
    down = [v for v in counted if v.verdict is Verdict.DOWN]
    up = [v for v in counted if v.verdict is Verdict.UP]
    live = len(down) + len(up)
    if live < quorum:
        reason = f"{live} of {quorum} votes needed to decide: keeps {last.value}"
        return Combined(node, last, counted, _with_votes(reason, counted), held=True)
    if len(down) >= quorum:
        reason = f"down by {len(down)} of {len(counted)} vantages (quorum {quorum})"
        return Combined(node, Verdict.DOWN, counted, _with_votes(reason, counted), held=False)
    reason = f"up: {len(down)} down of {quorum} needed, {len(up)} up"
    return Combined(node, Verdict.UP, counted, _with_votes(reason, counted), held=False)


def _with_votes(reason: str, votes: Sequence[Vote]) -> str:
    if not votes:
        return f"{reason}; no votes"
    return f"{reason}; " + "; ".join(v.describe() for v in votes)
