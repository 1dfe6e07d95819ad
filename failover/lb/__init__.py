"""Load-balancer adapters: a registry from the config's ``type:`` to the adapter class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from failover.lb.base import (
    GlobalLoadBalancer,
    LocalLoadBalancer,
    OperationalState,
    ServerState,
    ServerStatus,
)
from failover.lb.errors import (
    LoadBalancerError,
    LoadBalancerFenced,
    LoadBalancerInvalid,
    LoadBalancerLocalError,
    LoadBalancerNotFound,
    LoadBalancerRejected,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
)
from failover.lb.retry import NO_RETRY, RetryPolicy, call_with_retries
from nodevigil.core.authority import Authority
from nodevigil.core.config.schema import (
    HAProxyLB,
    LoadBalancer,
    PowerDnsLB,
    Rfc2136LB,
    split_host_port,
)
from nodevigil.core.config.secrets import load_secret
from nodevigil.core.errors import ConfigError

__all__ = [
    "NO_RETRY",
    "GlobalLoadBalancer",
    "LoadBalancerError",
    "LoadBalancerFenced",
    "LoadBalancerInvalid",
    "LoadBalancerLocalError",
    "LoadBalancerNotFound",
    "LoadBalancerRejected",
    "LoadBalancerTimeout",
    "LoadBalancerUnavailable",
    "LocalLoadBalancer",
    "OperationalState",
    "RetryPolicy",
    "ServerState",
    "ServerStatus",
    "build_global",
    "build_local",
    "call_with_retries",
]


def _haproxy(
    name: str,
    cfg: LoadBalancer,
    base_dir: Path | None,
    retry: RetryPolicy | None,
    authority: Authority | None = None,
) -> LocalLoadBalancer:
    from failover.lb.haproxy import HAProxyLoadBalancer

    assert isinstance(cfg, HAProxyLB)
    socket_path: Path | None = None
    address: tuple[str, int] | None = None
    if cfg.socket is not None:
        socket_path = Path(cfg.socket)
        if base_dir is not None and not socket_path.is_absolute():
            socket_path = base_dir / socket_path
    elif cfg.address is not None:
        address = split_host_port(cfg.address)
    else:
        raise ConfigError([f"load_balancers.{name}: give socket or address"])
    return HAProxyLoadBalancer(
        name=name,
        socket_path=socket_path,
        address=address,
        timeout=cfg.timeout,
        retry=retry,
        authority=authority,
    )


def _local_recording(
    name: str,
    cfg: LoadBalancer,
    base_dir: Path | None,
    retry: RetryPolicy | None,
    authority: Authority | None = None,
) -> LocalLoadBalancer:
    from failover.lb.recording import RecordingLocalLoadBalancer

    return RecordingLocalLoadBalancer(name)


def _rfc2136(
    name: str,
    cfg: LoadBalancer,
    base_dir: Path | None,
    retry: RetryPolicy | None,
    authority: Authority | None = None,
) -> GlobalLoadBalancer:
    from failover.lb.rfc2136 import Rfc2136LoadBalancer

    assert isinstance(cfg, Rfc2136LB)
    host, port = split_host_port(cfg.server, default_port=53)
    tsig_name = tsig_secret = None
    tsig_algorithm = "hmac-sha256"
    if cfg.tsig is not None:
        tsig_name, tsig_algorithm = cfg.tsig.name, cfg.tsig.algorithm
        tsig_secret = load_secret(f"load_balancers.{name}.tsig", cfg.tsig, base_dir, "tsig")
    try:
        return Rfc2136LoadBalancer(
            name=name,
            host=host,
            port=port,
            zone=cfg.zone,
            ttl=cfg.ttl,
            timeout=cfg.timeout,
            tsig_name=tsig_name,
            tsig_secret=tsig_secret,
            tsig_algorithm=tsig_algorithm,
            retry=retry,
            authority=authority,
            proof_servers=[split_host_port(s, 53) for s in cfg.proof_servers],
        )
    except ValueError as exc:
        raise ConfigError([f"load_balancers.{name}: {exc}"]) from None


def _powerdns(
    name: str,
    cfg: LoadBalancer,
    base_dir: Path | None,
    retry: RetryPolicy | None,
    authority: Authority | None = None,
) -> GlobalLoadBalancer:
    from failover.lb.powerdns import PowerDnsLoadBalancer

    assert isinstance(cfg, PowerDnsLB)
    return PowerDnsLoadBalancer(
        name=name,
        url=cfg.url,
        zone=cfg.zone,
        server_id=cfg.server_id,
        ttl=cfg.ttl,
        timeout=cfg.timeout,
        api_key=load_secret(f"load_balancers.{name}.api_key", cfg.api_key, base_dir, "text"),
        retry=retry,
        authority=authority,
        proof_servers=[split_host_port(s, 53) for s in cfg.proof_servers],
    )


def _global_recording(
    name: str,
    cfg: LoadBalancer,
    base_dir: Path | None,
    retry: RetryPolicy | None,
    authority: Authority | None = None,
) -> GlobalLoadBalancer:
    from failover.lb.recording import RecordingGlobalLoadBalancer

    return RecordingGlobalLoadBalancer(name)


# (name, config entry, base directory, retry policy, authority): see build_local/build_global.
LocalFactory = Callable[
    [str, LoadBalancer, Path | None, RetryPolicy | None, Authority | None], LocalLoadBalancer
]
GlobalFactory = Callable[
    [str, LoadBalancer, Path | None, RetryPolicy | None, Authority | None], GlobalLoadBalancer
]
LOCAL_REGISTRY: dict[str, LocalFactory] = {
    "haproxy": _haproxy,
    "recording": _local_recording,
}
GLOBAL_REGISTRY: dict[str, GlobalFactory] = {
    "rfc2136": _rfc2136,
    "powerdns": _powerdns,
    "recording": _global_recording,
}


def build_local(
    name: str,
    cfg: LoadBalancer,
    base_dir: Path | None = None,
    *,
    retry: RetryPolicy | None = None,
    authority: Authority | None = None,
) -> LocalLoadBalancer:
    """Build the local load-balancer adapter for the config entry ``name``.

    With ``authority`` (a cluster's leader lease) its changes are fenced: see the adapters."""
    factory = LOCAL_REGISTRY.get(cfg.type)
    if factory is None:
        raise ConfigError(
            [f"load_balancers.{name}.type: {cfg.type!r} is not a local load balancer"]
        )
    return factory(name, cfg, base_dir, retry, authority)


def build_global(
    name: str,
    cfg: LoadBalancer,
    base_dir: Path | None = None,
    *,
    retry: RetryPolicy | None = None,
    authority: Authority | None = None,
) -> GlobalLoadBalancer:
    """Build the global load-balancer adapter for the config entry ``name``.

    With ``authority`` (a cluster's leader lease) its changes are fenced: see the adapters."""
    factory = GLOBAL_REGISTRY.get(cfg.type)
    if factory is None:
        raise ConfigError(
            [f"load_balancers.{name}.type: {cfg.type!r} is not a global load balancer"]
        )
    return factory(name, cfg, base_dir, retry, authority)
