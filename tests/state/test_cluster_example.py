"""configs/cluster.yaml: the shipped cluster example is a valid configuration on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.core.config import load_config
from nodevigil.state.backend import PostgresBackend, backend_for

EXAMPLE = Path(__file__).parents[2] / "configs" / "cluster.yaml"


def test_the_cluster_example_validates_and_chooses_postgresql() -> None:
    config = load_config(EXAMPLE, event_kinds=EVENT_KINDS)
    assert config.database is not None and config.cluster is not None
    assert len(config.cluster.etcd.endpoints) == 3
    assert "@" in config.database.url and ":" not in config.database.url.split("@")[0][13:]
    backend = backend_for(config)
    assert isinstance(backend, PostgresBackend) and backend.owner == config.vantage
