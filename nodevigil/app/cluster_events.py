"""The events of the leader lease: one frozen dataclass per kind (``subject`` is this host).

Published once per change of this process's role, so an alert route can page on
``cluster.fenced`` (nobody may act) or follow hand-overs with ``cluster.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodevigil.core.events import Event, kinds_of


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterLeader(Event):
    """This process took the leader lease: it acts under ``epoch`` from now on."""

    KIND = "cluster.leader"
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStandby(Event):
    """This process is a warm standby: ``leader`` (None: nobody yet) acts."""

    KIND = "cluster.standby"
    leader: str | None
    epoch: int | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterFenced(Event):
    """This process may not act and cannot tell who may (etcd away, lease run out)."""

    KIND = "cluster.fenced"
    reason: str


EVENT_TYPES: tuple[type[Event], ...] = (ClusterLeader, ClusterStandby, ClusterFenced)
EVENT_KINDS = kinds_of(EVENT_TYPES)
