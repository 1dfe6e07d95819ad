"""The two kinds of load balancer the controller drives, as small Protocols."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class ServerState(enum.StrEnum):
    """A server's administrative state in its local load balancer (HAProxy's words)."""

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


class OperationalState(enum.StrEnum):
    """A server's operational state as the load balancer itself sees it."""

    DOWN = "down"
    STARTING = "starting"
    UP = "up"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server of a backend as read back from the load balancer."""

    name: str
    admin: ServerState
    operational: OperationalState
    address: str
    port: int | None = None

    @property
    def serving(self) -> bool:
        """True when the server takes new traffic: ready and operationally up."""
        return self.admin is ServerState.READY and self.operational in (
            OperationalState.UP,
            OperationalState.STARTING,
        )


@runtime_checkable
class LocalLoadBalancer(Protocol):
    """A load balancer in front of the nodes of one site (HAProxy)."""

    @property
    def name(self) -> str:
        """The load balancer's name from the configuration."""
        ...

    async def servers(self, backend: str) -> dict[str, ServerStatus]:
        """Read back every server of ``backend`` with its actual state."""
        ...

    async def set_state(self, backend: str, server: str, state: ServerState) -> None:
        """Put ``server`` of ``backend`` into ``state``."""
        ...

    async def close(self) -> None:
        """Release connections; the adapter is not used afterwards."""
        ...


@runtime_checkable
class GlobalLoadBalancer(Protocol):
    """A DNS-based load balancer in front of the sites of a service."""

    @property
    def name(self) -> str:
        """The load balancer's name from the configuration."""
        ...

    async def addresses(self, record: str) -> set[str]:
        """Read back the A and AAAA addresses of ``record`` (relative to the zone)."""
        ...

    async def set_addresses(self, record: str, addresses: set[str]) -> None:
        """Replace the A/AAAA set of ``record`` atomically (TTL from the adapter's config)."""
        ...

    async def close(self) -> None:
        """Release connections; the adapter is not used afterwards."""
        ...
