"""Everyone's votes as last seen in etcd: fed snapshots and watch events, tells subscribers.

A subscriber hears of a change only when the table changes (a vote written again with the same
value is silent), so a re-read snapshot reaches it as the difference from the table: new and
changed votes, and None for every vote that vanished meanwhile. Keys that are not votes are
counted by reason and treated as holding no vote; each refused value is counted once, however
often a snapshot shows it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from prometheus_client import Counter

from nodevigil.state.etcd.values import KeyValue
from nodevigil.state.etcd.votevalues import Refused, StoredVote, decode, parse_key

log = logging.getLogger(__name__)

Subscriber = Callable[[str, str, StoredVote | None], None]
# (node, vote or None, the key's lease, the revision) of one of the owner's own keys.
OwnObserver = Callable[[str, StoredVote | None, int, int], None]


class VoteTable:
    """node -> vantage -> vote; ``own``'s keys are also reported to ``observe_own``."""

    def __init__(self, *, own: str, refused: Counter, observe_own: OwnObserver) -> None:
        self._own = own
        self._refused_total = refused
        self._observe_own = observe_own
        self._rows: dict[str, dict[str, StoredVote]] = {}
        self._refused: dict[str, int] = {}  # key -> mod_revision already counted
        self._subscribers: list[Subscriber] = []
        self.revision = 0  # the newest revision seen (snapshot or event)

    def subscribe(self, callback: Subscriber) -> None:
        """Tell ``callback`` every change from now on, after every vote already held."""
        self._subscribers.append(callback)
        for node, row in list(self._rows.items()):
            for vantage, vote in list(row.items()):
                _call(callback, node, vantage, vote)

    def view(self) -> Mapping[str, Mapping[str, StoredVote]]:
        """A live, read-only view of the table."""
        return MappingProxyType(self._rows)

    def count(self) -> int:
        """How many votes the table holds."""
        return sum(len(row) for row in self._rows.values())

    def holds(self, node: str, vantage: str) -> bool:
        """True when the table has ``vantage``'s vote of ``node``."""
        return vantage in self._rows.get(node, {})

    def apply(self, kv: KeyValue, *, deleted: bool) -> None:
        """One watch event."""
        self.revision = max(self.revision, kv.mod_revision)
        parsed = self._parse(kv, deleted=deleted)
        if parsed is None:
            return
        node, vantage, vote = parsed
        if vantage == self._own:
            self._observe_own(node, vote, kv.lease, kv.mod_revision)
        self._set(node, vantage, vote)

    def load(self, rows: Sequence[KeyValue], revision: int) -> None:
        """A fresh snapshot at ``revision``: subscribers get the difference from the table."""
        self.revision = max(self.revision, revision)
        fresh: dict[tuple[str, str], tuple[StoredVote | None, KeyValue]] = {}
        for kv in rows:
            parsed = self._parse(kv, deleted=False)
            if parsed is not None:
                fresh[parsed[0], parsed[1]] = (parsed[2], kv)
        gone = [(n, v) for n, row in self._rows.items() for v in row if (n, v) not in fresh]
        for node, vantage in gone:
            self._set(node, vantage, None)
        for (node, vantage), (vote, kv) in fresh.items():
            if vantage == self._own:
                self._observe_own(node, vote, kv.lease, kv.mod_revision)
            self._set(node, vantage, vote)

    def _parse(self, kv: KeyValue, *, deleted: bool) -> tuple[str, str, StoredVote | None] | None:
        """``(node, vantage, vote)`` of a key; the vote is None when deleted or refused."""
        try:
            node, vantage = parse_key(kv.key)
            if deleted:
                self._refused.pop(kv.key, None)
                return node, vantage, None
            return node, vantage, decode(node, vantage, kv.value)
        except Refused as exc:
            if not deleted and self._refused.get(kv.key) != kv.mod_revision:  # once a value
                self._refused[kv.key] = kv.mod_revision
                self._refused_total.labels(exc.reason).inc()
                log.warning("votes: ignored %r: %s", kv.key, exc)
            return None if exc.reason == "key" else (node, vantage, None)

    def _set(self, node: str, vantage: str, vote: StoredVote | None) -> None:
        row = self._rows.get(node)
        if (row or {}).get(vantage) == vote:
            return
        if vote is not None:
            self._rows.setdefault(node, {})[vantage] = vote
        elif row is not None:
            del row[vantage]
            if not row:
                del self._rows[node]
        for callback in list(self._subscribers):
            _call(callback, node, vantage, vote)


def _call(callback: Subscriber, node: str, vantage: str, vote: StoredVote | None) -> None:
    try:
        callback(node, vantage, vote)
    except Exception:  # one subscriber's bug must not stop the watch or the other subscribers
        log.exception("votes: a subscriber failed on %s/%s", node, vantage)
