"""A real BIND serving one zone: re-exported from ``nodevigil.app.demo.servers.bind``."""

from nodevigil.app.demo.servers.bind import (
    NAMED,
    ZONE,
    BindInstance,
    addresses_of,
    dns_query,
    run_bind,
    tsig_secret,
)

__all__ = ["NAMED", "ZONE", "BindInstance", "addresses_of", "dns_query", "run_bind", "tsig_secret"]
