"""nodevigil: cloud node health monitor, failover controller and SLA credit ledger."""

__version__ = "0.1.0"
