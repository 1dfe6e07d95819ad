"""The cluster section's timing rules are checked with the rest of the configuration."""

from __future__ import annotations

from typing import Any

import pytest

from nodevigil.core.config import parse_config
from nodevigil.core.errors import ConfigError


def cluster(**lbs: dict[str, Any]) -> dict[str, Any]:
    return {
        "database": {"url": "postgresql://nodevigil@db/nodevigil"},
        "cluster": {
            "etcd": {"endpoints": ["http://127.0.0.1:2379"], "timeout": "300ms"},
            "lease_ttl": "2s",
            "renew_every": "500ms",
        },
        "load_balancers": lbs,
    }


def test_a_load_balancer_timeout_the_lease_never_leaves_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(cluster(h={"type": "haproxy", "socket": "/run/h.sock", "backend": "web"}))
    assert caught.value.problems == [
        "load_balancers.h.timeout: 2s does not fit in the leader lease: commands are sent only "
        "while this much of it is left, and at most 1.3s ever is "
        "(lease_ttl - renew_every - margin)"
    ]
    fits = {"type": "haproxy", "socket": "/run/h.sock", "backend": "web", "timeout": "500ms"}
    assert parse_config(cluster(h=fits)).cluster is not None


def test_renewals_must_fit_in_the_lease_and_a_cluster_needs_a_database() -> None:
    data = cluster()
    data["cluster"]["etcd"]["timeout"] = "1s"
    with pytest.raises(ConfigError, match="must not exceed lease_ttl"):
        parse_config(data)
    with pytest.raises(ConfigError, match="cluster: needs a database section"):
        parse_config({"cluster": cluster()["cluster"]})
