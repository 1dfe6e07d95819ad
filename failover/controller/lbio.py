"""The controller's edge towards the load balancers: read back actual state, apply actions.

Every call is bounded by a timeout and every failure is caught here and handed to ``report``,
so one unreachable load balancer never stops the others or the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from failover.controller.decide import site_backend
from failover.controller.release import Release
from failover.controller.state import Action, Observed, SetAddresses, SetServerState
from failover.controller.store import ActionRecord
from failover.events import AddressesSet, ServerStateSet
from failover.lb.base import GlobalLoadBalancer, LocalLoadBalancer, ServerState
from failover.lb.errors import (
    LoadBalancerError,
    LoadBalancerInvalid,
    LoadBalancerLocalError,
    LoadBalancerNotFound,
    LoadBalancerRejected,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
)
from nodevigil.core.authority import Authority
from nodevigil.core.config.schema import Config, Node
from nodevigil.core.errors import ConfigError

# report(key, lb, what, target, error): error None means the call succeeded.
Report = Callable[[str, str, str, str, BaseException | None], None]


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one action."""

    action: Action
    error: str | None
    # The fencing epoch the command was sent under, read right before it (None on one host).
    epoch: int | None = None


async def _bounded(call: Awaitable[object], seconds: float) -> object:
    async with asyncio.timeout(seconds):
        return await call


def _failure(exc: BaseException, lb: str, seconds: float) -> BaseException:
    if isinstance(exc, TimeoutError) and not isinstance(exc, LoadBalancerError):
        # The controller's own bound ran out (the adapter's timeouts and retries took longer).
        return LoadBalancerTimeout(f"{lb}: no answer within {seconds:g}s")
    return exc


def failure_kind(error: BaseException) -> tuple[str, str | None]:
    """What kind of trouble ``error`` is, for events: the kind and, when known, the code."""
    kinds: list[tuple[type[BaseException], str]] = [
        (LoadBalancerLocalError, "local"),  # nodevigil's own trouble, not the LB's
        (LoadBalancerTimeout, "timeout"),
        (LoadBalancerUnavailable, "unreachable"),
        (LoadBalancerRejected, "rejected"),
        (LoadBalancerNotFound, "not_found"),
        (LoadBalancerInvalid, "invalid"),
    ]
    kind = next((name for cls, name in kinds if isinstance(error, cls)), "error")
    code = error.code if isinstance(error, LoadBalancerRejected) and error.code else None
    return kind, code


def read_key(lb: str, target: str) -> str:
    """The report key of the read-back of one backend or record of load balancer ``lb``."""
    return f"read:{lb}\0{target}"


def unreadable(failing: Iterable[str]) -> set[str]:
    """The load balancers with a read-back among the ``failing`` report keys."""
    return {k.removeprefix("read:").split("\0", 1)[0] for k in failing if k.startswith("read:")}


async def read_back(
    config: Config,
    local_lbs: Mapping[str, LocalLoadBalancer],
    global_lbs: Mapping[str, GlobalLoadBalancer],
    seconds: float,
    report: Report,
    *,
    only_sites: Collection[str] | None = None,
    only_records: Collection[tuple[str, str]] | None = None,
    nodes_of: Mapping[str, Sequence[Node]] | None = None,
) -> tuple[Observed, bool]:
    """Read every local backend and global record in use; return what was read and if all was.

    With ``only_sites``, only those sites' servers (a backend shared with other sites is read, but
    only these sites' servers in it are checked), and with ``only_records`` only those records.
    ``nodes_of`` (site -> nodes) saves grouping the configuration's nodes again.
    """
    servers: dict[str, ServerState] = {}
    records: dict[tuple[str, str], frozenset[str]] = {}
    complete = True

    async def read_local(lb_name: str, backend: str, members: dict[str, str]) -> None:
        nonlocal complete
        key, target = read_key(lb_name, backend), f"backend {backend}"
        lb = local_lbs.get(lb_name)
        try:
            if lb is None:
                raise LoadBalancerError(f"no adapter for local load balancer {lb_name!r}")
            got = await _bounded(lb.servers(backend), seconds)
        except Exception as exc:  # any adapter bug is contained to its own LB
            complete = False
            report(key, lb_name, "read", target, _failure(exc, lb_name, seconds))
            return
        assert isinstance(got, dict)
        report(key, lb_name, "read", target, None)
        for server, node in members.items():
            status = got.get(server)
            skey = f"server:{lb_name}:{backend}:{server}"
            if status is None:
                complete = False
                error = LoadBalancerError(f"{lb_name}: no server {server!r} in backend {backend}")
                report(skey, lb_name, "read", f"{backend}/{server}", error)
            else:
                report(skey, lb_name, "read", f"{backend}/{server}", None)
                servers[node] = status.admin

    async def read_global(lb_name: str, record: str) -> None:
        nonlocal complete
        key, target = read_key(lb_name, record), f"record {record}"
        lb = global_lbs.get(lb_name)
        try:
            if lb is None:
                raise LoadBalancerError(f"no adapter for global load balancer {lb_name!r}")
            got = await _bounded(lb.addresses(record), seconds)
        except Exception as exc:
            complete = False
            report(key, lb_name, "read", target, _failure(exc, lb_name, seconds))
            return
        assert isinstance(got, set | frozenset)
        report(key, lb_name, "read", target, None)
        records[(lb_name, record)] = frozenset(str(a) for a in got)

    backends: dict[tuple[str, str], dict[str, str]] = {}
    if nodes_of is None:
        grouped: dict[str, list[Node]] = {}
        for node in config.nodes:  # one pass, not one per site (O(sites x nodes))
            grouped.setdefault(node.site, []).append(node)
        nodes_of = grouped
    for site in config.sites:
        if site.local_lb is None or (only_sites is not None and site.name not in only_sites):
            continue
        members = backends.setdefault((site.local_lb, site_backend(config, site)), {})
        members.update((n.server_name, n.name) for n in nodes_of.get(site.name, ()))
    wanted = {
        (svc.global_lb, svc.record)
        for svc in config.services
        if svc.global_lb is not None and svc.record is not None
    }
    if only_records is not None:
        wanted &= set(only_records)
    await asyncio.gather(
        *(read_local(lb, be, m) for (lb, be), m in backends.items()),
        *(read_global(lb, rec) for lb, rec in sorted(wanted)),
    )
    return Observed(servers, records), complete


async def apply(
    actions: tuple[Action, ...],
    local_lbs: Mapping[str, LocalLoadBalancer],
    global_lbs: Mapping[str, GlobalLoadBalancer],
    seconds: float,
    report: Report,
    *,
    authority: Authority | None = None,
) -> list[Applied]:
    """Apply actions: one load balancer's in order, different load balancers concurrently.

    With ``authority``, each command is sent only while it may act, checked immediately
    before the command: an action not sent for want of it is left out of the results.
    """
    by_lb: dict[str, list[Action]] = {}
    for action in actions:
        by_lb.setdefault(action.lb, []).append(action)
    results: list[Applied] = []

    async def one(action: Action) -> None:
        if authority is not None and not authority.may_act():
            return  # the lease ran out mid-cycle: the next leader repairs what is left
        epoch = None if authority is None else authority.epoch
        if isinstance(action, SetServerState):
            key = f"set:{action.lb}:{action.backend}:{action.server}"
            target = f"{action.backend}/{action.server}"
            local = local_lbs.get(action.lb)
            call = (
                None
                if local is None
                else local.set_state(action.backend, action.server, action.new)
            )
        else:
            assert isinstance(action, SetAddresses)
            key, target = f"set:{action.lb}:{action.record}", f"record {action.record}"
            glob = global_lbs.get(action.lb)
            call = None if glob is None else glob.set_addresses(action.record, set(action.new))
        try:
            if call is None:
                raise LoadBalancerError(f"no adapter for load balancer {action.lb!r}")
            await _bounded(call, seconds)
        except Exception as exc:
            failure = _failure(exc, action.lb, seconds)
            report(key, action.lb, "set", target, failure)
            results.append(Applied(action, str(failure) or type(failure).__name__, epoch))
            return
        report(key, action.lb, "set", target, None)
        results.append(Applied(action, None, epoch))

    async def run(group: list[Action]) -> None:
        for action in group:
            await one(action)

    await asyncio.gather(*(run(group) for group in by_lb.values()))
    return results


RELEASE_WHY = "no longer in the configuration: back to ready, no longer managed"


async def release(
    pending: list[Release],
    local_lbs: Mapping[str, LocalLoadBalancer],
    seconds: float,
    report: Report,
    *,
    authority: Authority | None = None,
) -> tuple[list[Applied], list[Release]]:
    """Set each released server that is still out back to ready; return the results and the
    releases to retry next cycle (a read or a set failed)."""
    by_backend: dict[tuple[str, str], list[Release]] = {}
    for r in pending:
        by_backend.setdefault((r.lb, r.backend), []).append(r)
    applied: list[Applied] = []
    retry: list[Release] = []
    for (lb_name, backend), group in by_backend.items():
        lb = local_lbs.get(lb_name)
        if lb is None:
            continue  # adapters are fixed at start, so this cannot happen; nothing to undo
        try:
            got = await _bounded(lb.servers(backend), seconds)
        except LoadBalancerNotFound:
            continue  # the operator removed the backend too: nothing left to undo
        except Exception as exc:
            failure = _failure(exc, lb_name, seconds)
            report(read_key(lb_name, backend), lb_name, "read", f"backend {backend}", failure)
            retry += group
            continue
        assert isinstance(got, dict)
        actions = tuple(
            SetServerState(
                lb_name,
                backend,
                r.server,
                r.node,
                r.site,
                status.admin,
                ServerState.READY,
                RELEASE_WHY,
            )
            for r in group
            # A server gone from HAProxy, or already in, has nothing of nodevigil's to undo.
            if (status := got.get(r.server)) is not None and status.admin is not ServerState.READY
        )
        results = await apply(actions, local_lbs, {}, seconds, report, authority=authority)
        failed = {
            a.action.server
            for a in results
            if a.error is not None and isinstance(a.action, SetServerState)
        }
        # Failed, or not sent because this process stopped acting: retried next cycle.
        sent = {a.action.server for a in results if isinstance(a.action, SetServerState)}
        unsent = {a.server for a in actions} - sent
        retry += [r for r in group if r.server in failed or r.server in unsent]
        applied += results
    return applied, retry


def describe_applied(
    result: Applied, wall: float, vantage: str
) -> tuple[ServerStateSet | AddressesSet, ActionRecord]:
    """The ``lb.action`` event and the action-log record, for one result: both name the
    acting ``vantage`` and the epoch the command was sent under."""
    a = result.action
    event: ServerStateSet | AddressesSet
    if isinstance(a, SetServerState):
        event = ServerStateSet(
            subject=a.node,
            at=wall,
            vantage=vantage,
            lb=a.lb,
            why=a.why,
            epoch=result.epoch,
            backend=a.backend,
            server=a.server,
            node=a.node,
            site=a.site,
            old=a.old.value if a.old else None,
            new=a.new.value,
        )
        target, old, new = f"{a.backend}/{a.server}", str(event.old), str(event.new)
    else:
        event = AddressesSet(
            subject=a.service,
            at=wall,
            vantage=vantage,
            lb=a.lb,
            why=a.why,
            epoch=result.epoch,
            record=a.record,
            service=a.service,
            old=tuple(sorted(a.old)),
            new=tuple(sorted(a.new)),
        )
        # The action log's text as before: the sorted lists' repr.
        target, old, new = a.record, str(list(event.old)), str(list(event.new))
    outcome = "ok" if result.error is None else "error"
    record = ActionRecord(
        wall,
        a.lb,
        event.what,
        target,
        old,
        new,
        a.why,
        outcome,
        result.error,
        vantage=vantage,
        epoch=result.epoch,
    )
    return event, record


def after_applied(observed: Observed, applied: list[Applied]) -> Observed:
    """Read-back state with the successful actions applied (for status until the next read)."""
    servers = dict(observed.servers)
    records = dict(observed.records)
    for result in applied:
        if result.error is not None:
            continue
        a = result.action
        if isinstance(a, SetServerState):
            servers[a.node] = a.new
        else:
            records[(a.lb, a.record)] = a.new
    return replace(observed, servers=servers, records=records)


def check_adapters(
    config: Config,
    local: Mapping[str, LocalLoadBalancer],
    global_: Mapping[str, GlobalLoadBalancer],
) -> None:
    """Raise ConfigError listing every load balancer the config names but no adapter serves."""
    problems = [
        f"sites.{s.name}.local_lb: no adapter given for {s.local_lb!r}"
        for s in config.sites
        if s.local_lb is not None and s.local_lb not in local
    ]
    problems += [
        f"services.{s.name}.global_lb: no adapter given for {s.global_lb!r}"
        for s in config.services
        if s.global_lb is not None and s.global_lb not in global_
    ]
    if problems:
        raise ConfigError(problems, source="failover controller")
