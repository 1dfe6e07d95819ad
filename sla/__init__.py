"""SLA credits (clauses VIII.7-VIII.9): the credit rule, the offline calculator and the ledger.

Imports nothing from ``monitor`` or ``failover``; from ``nodevigil`` only the kernel (``core``).
Its SQLite store lives in ``nodevigil.state.sqlite.ledger``.
"""
