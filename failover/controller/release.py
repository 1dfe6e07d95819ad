"""What a reload leaves behind: servers and overrides of nodes and sites no longer configured.

nodevigil manages the admin state of every load-balancer server its configuration names. When a
reload stops naming one (its node was removed, renamed, moved to another server, backend or
site, or its site was removed), nodevigil undoes its own action and lets go: a server it was
holding out (maint or drain) is set back to ``ready``, which clears only the runtime state
nodevigil set (a server the HAProxy configuration marks ``disabled`` stays disabled), and from
then on nodevigil never touches it. A server nodevigil had left in is not touched at all.
Overrides (drains) naming a node or site the configuration no longer has are dropped.

Pure functions here; the controller loop does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from failover.controller.decide import site_backend
from failover.controller.state import Decision, Override, OverrideKind
from failover.lb.base import ServerState
from nodevigil.core.config.schema import Config

ServerKey = tuple[str, str, str]  # (local load balancer, backend, server)


@dataclass(frozen=True, slots=True)
class Release:
    """A server nodevigil held out and no longer manages: to be set back to ready once."""

    lb: str
    backend: str
    server: str
    node: str
    site: str

    @property
    def key(self) -> ServerKey:
        """The server's identity in its load balancer."""
        return (self.lb, self.backend, self.server)


def managed_servers(config: Config) -> dict[ServerKey, tuple[str, str]]:
    """Every server ``config`` manages -> (node, site)."""
    sites = {s.name: s for s in config.sites}
    managed: dict[ServerKey, tuple[str, str]] = {}
    for node in config.nodes:
        site = sites.get(node.site)
        if site is None or site.local_lb is None:
            continue
        managed[(site.local_lb, site_backend(config, site), node.server_name)] = (
            node.name,
            site.name,
        )
    return managed


def releases(old: Config, new: Config, last: Decision | None) -> list[Release]:
    """Servers ``old`` managed and ``new`` does not, which the last decision held out."""
    kept = managed_servers(new)
    found: list[Release] = []
    for key, (node, site) in managed_servers(old).items():
        if key in kept or last is None:
            continue
        view = last.nodes.get(node)
        if view is None or view.desired is ServerState.READY:
            continue  # nodevigil left it in: nothing of its own to undo
        found.append(Release(*key, node, site))
    return found


def still_released(pending: Iterable[Release], config: Config) -> list[Release]:
    """The pending releases whose server ``config`` does not manage again (then it owns it)."""
    pending = list(pending)
    if not pending:
        return []  # the common case, every cycle: no map of 10,000 servers built for nothing
    kept = managed_servers(config)
    return [r for r in pending if r.key not in kept]


def orphaned(
    overrides: Mapping[tuple[OverrideKind, str], Override], config: Config
) -> list[Override]:
    """Overrides naming a node or site ``config`` does not have, sorted by kind and name."""
    if not overrides:
        return []  # the common case, every cycle: no set of 10,000 names built for nothing
    nodes = {n.name for n in config.nodes}
    sites = {s.name for s in config.sites}
    return [
        o
        for key, o in sorted(overrides.items())
        if o.name not in (nodes if o.kind == "node" else sites)
    ]
