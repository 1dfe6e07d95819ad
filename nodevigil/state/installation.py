"""This installation's id: drawn once, kept with the state, the same for every host of a cluster.

It is the first part of every customer notice's id (``webhook-id``, the mail's Message-ID), so
two installations never send the same id. It lives in the ledger's settings, the state that
``nodevigil state export``/``import`` carry whole and a backup of ``state_dir`` holds: a move
or a restore keeps the installation. On PostgreSQL the first host to start draws it and every
other host reads the same row.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from sla.store import LedgerStore

KEY = "installation"


def new_installation_id() -> str:
    """Twelve random hex digits (48 bits): unique enough among one provider's installations."""
    return secrets.token_hex(6)


def installation_id(ledger_store: Callable[[], LedgerStore]) -> str:
    """The stored installation id, drawn and stored first when there is none (blocking)."""
    store = ledger_store()
    try:
        with store.transaction():
            return store.meta_setdefault(KEY, new_installation_id())
    finally:
        store.close()
