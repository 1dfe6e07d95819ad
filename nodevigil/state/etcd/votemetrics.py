"""``nodevigil_cluster_vote*``: what the vote store writes, refuses and sees, per registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class VoteMetrics:
    """The vote store's metrics in ``registry`` (never the global one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter(
            "nodevigil_cluster_vote_writes",
            "Votes this vantage wrote to etcd (puts and deletes), counted once per vote.",
            registry=registry,
        )
        self.transactions = Counter(
            "nodevigil_cluster_vote_transactions",
            "etcd transactions that wrote this vantage's votes (several votes each).",
            registry=registry,
        )
        self.write_errors = Counter(
            "nodevigil_cluster_vote_write_errors",
            "Vote transactions that failed (their votes are retried).",
            registry=registry,
        )
        self.latency = Histogram(
            "nodevigil_cluster_vote_write_seconds",
            "Time a vote transaction took to be answered by etcd.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.refused = Counter(
            "nodevigil_cluster_votes_refused",
            "Keys under votes/ that were not a valid vote and were ignored, by reason "
            "(key, json, field, mismatch).",
            ["reason"],
            registry=registry,
        )
        # The store sets a function: read at scrape time, never stale.
        self.votes = Gauge(
            "nodevigil_cluster_votes",
            "Votes of every vantage as this process last saw them in etcd.",
            registry=registry,
        )
