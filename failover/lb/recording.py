"""In-process load balancers that keep state in memory and record every call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from failover.lb.base import OperationalState, ServerState, ServerStatus
from failover.lb.dnsnames import split_addresses
from failover.lb.errors import LoadBalancerError, LoadBalancerNotFound, LoadBalancerUnavailable


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One call made to a recording load balancer."""

    at: float
    method: str
    args: tuple[Any, ...]
    error: str | None = None


@dataclass
class _Recorder:
    name: str
    clock: Callable[[], float] = time.monotonic
    calls: list[RecordedCall] = field(default_factory=list)
    # When set, every call records itself and then raises this error (LB trouble in tests).
    failure: LoadBalancerError | None = None

    def fail_with(self, error: LoadBalancerError | None = None) -> None:
        """Make every later call fail with ``error`` (default: unreachable)."""
        self.failure = error or LoadBalancerUnavailable(f"{self.name}: recording failure")

    def recover(self) -> None:
        """Let calls succeed again."""
        self.failure = None

    def calls_to(self, method: str) -> list[RecordedCall]:
        """The recorded calls of one method, in order."""
        return [call for call in self.calls if call.method == method]

    def _record(self, method: str, *args: Any) -> None:
        failure = self.failure
        self.calls.append(
            RecordedCall(self.clock(), method, args, None if failure is None else str(failure))
        )
        if failure is not None:
            raise failure

    async def close(self) -> None:
        """Record the close."""
        self._record("close")


@dataclass
class RecordingLocalLoadBalancer(_Recorder):
    """A local load balancer in memory: backends of servers with admin state."""

    backends: dict[str, dict[str, ServerStatus]] = field(default_factory=dict)

    def add_server(self, backend: str, server: str, address: str = "127.0.0.1") -> None:
        """Declare a server (ready, up), as HAProxy's config would."""
        self.backends.setdefault(backend, {})[server] = ServerStatus(
            server, ServerState.READY, OperationalState.UP, address
        )

    async def servers(self, backend: str) -> dict[str, ServerStatus]:
        """Return a copy of the backend's servers."""
        self._record("servers", backend)
        if backend not in self.backends:
            raise LoadBalancerNotFound(f"{self.name}: no backend {backend!r}", backend=backend)
        return dict(self.backends[backend])

    async def set_state(self, backend: str, server: str, state: ServerState) -> None:
        """Change a server's admin state; maint also takes it operationally down."""
        self._record("set_state", backend, server, ServerState(state))
        current = self.backends.get(backend, {}).get(server)
        if current is None:
            raise LoadBalancerNotFound(
                f"{self.name}: no server {backend}/{server}", backend=backend, server=server
            )
        # HAProxy reports a server in maintenance as operationally stopped.
        operational = OperationalState.DOWN if state is ServerState.MAINT else OperationalState.UP
        self.backends[backend][server] = ServerStatus(
            server, ServerState(state), operational, current.address, current.port
        )


@dataclass
class RecordingGlobalLoadBalancer(_Recorder):
    """A global load balancer in memory: record name to its address set."""

    records: dict[str, set[str]] = field(default_factory=dict)

    async def addresses(self, record: str) -> set[str]:
        """Return a copy of the record's addresses (empty when absent)."""
        self._record("addresses", record)
        return set(self.records.get(record, set()))

    async def set_addresses(self, record: str, addresses: set[str]) -> None:
        """Replace the record's addresses."""
        self._record("set_addresses", record, frozenset(addresses))
        split_addresses(addresses)  # reject what a real DNS server would reject
        if addresses:
            self.records[record] = set(addresses)
        else:
            self.records.pop(record, None)
