"""nodevigil's own resources: which errors mean *we* ran out, and the descriptor limit.

A probe that cannot open a socket has learnt nothing about the node, and a read-back that
cannot open a socket has learnt nothing about the load balancer. These errno values are
trouble of this host and this process, never of the peer:

- ``EMFILE``: this process is at its descriptor limit (RLIMIT_NOFILE);
- ``ENFILE``: the host is at its system-wide file limit;
- ``ENOBUFS`` and ``ENOMEM``: the kernel has no memory for another socket or packet buffer;
- ``EADDRNOTAVAIL``: on connect, no local address or ephemeral port is left to use (port
  exhaustion, or no source address of that family on this host);
- ``EAGAIN``: on a TCP or UDP connect, Linux's "no more free local ports"; asyncio retries the
  non-blocking reads and writes that return it, so one that escapes comes from connect.

Left out on purpose: ``ECONNREFUSED``, ``ECONNRESET``, ``EHOSTUNREACH``, ``ENETUNREACH`` and
``ETIMEDOUT`` (what the network or the node answered), ``EPERM``/``EACCES`` (a local firewall
rule is a deliberate policy, not exhaustion), and TLS or resolver errors, whose ``errno`` is not
an ``errno`` value at all.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable

LOCAL_ERRNOS: frozenset[int] = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL, errno.EAGAIN}
)
_CHAIN_DEPTH = 8  # adapters wrap errors (icmplib, aiohttp): look this far down the chain

log = logging.getLogger(__name__)


def local_errno(exc: BaseException | None) -> str | None:
    """The errno name (``"EMFILE"``) when ``exc``, or an error it wraps, is local exhaustion."""
    for _ in range(_CHAIN_DEPTH):
        if exc is None:
            return None
        if (
            isinstance(exc, OSError)
            and not isinstance(exc, ssl.SSLError | socket.gaierror)
            and exc.errno in LOCAL_ERRNOS
        ):
            return errno.errorcode[exc.errno]
        wrapped = getattr(exc, "os_error", None)  # aiohttp's ClientConnectorError
        exc = wrapped if isinstance(wrapped, OSError) else (exc.__cause__ or exc.__context__)
    return None


def explain(name: str) -> str:
    """``EMFILE`` -> ``"out of file descriptors (EMFILE)"``: what nodevigil ran out of."""
    what = {
        "EMFILE": "out of file descriptors",
        "ENFILE": "out of file descriptors host-wide",
        "ENOBUFS": "out of kernel buffer space",
        "ENOMEM": "out of kernel memory",
        "EADDRNOTAVAIL": "out of local addresses or ephemeral ports",
        "EAGAIN": "out of ephemeral ports",
    }.get(name, "out of a local resource")
    return f"{what} ({name})"


class LocalTrouble:
    """Counts local-resource errors by errno and logs an episode once when it starts and once
    when it ends (Home Assistant's coordinator habit), never once per error.

    An episode ends only after ``quiet`` seconds without a local error: under descriptor
    exhaustion a pooled connection still works while new sockets fail, and that mix must not
    log a start and an end every second.
    """

    def __init__(
        self,
        what: str,
        *,
        consequence: str = "results are inconclusive (never failures) until it recovers",
        logger: logging.Logger = log,
        monotonic: Callable[[], float] = time.monotonic,
        quiet: float = 5.0,
    ) -> None:
        self.what = what  # "probes", "the API's accept": the subject of the log lines
        self.consequence = consequence
        self.counts: Counter[str] = Counter()
        self._log = logger
        self._monotonic = monotonic
        self._quiet = quiet
        self._since: float | None = None
        self._last = 0.0
        self._during = 0

    @property
    def active(self) -> bool:
        """Whether an episode is under way."""
        return self._since is not None

    def hit(self, name: str) -> None:
        """One more local error ``name``; the first of an episode is logged."""
        self.counts[name] += 1
        self._during += 1
        self._last = self._monotonic()
        if self._since is None:
            self._since = self._last
            self._log.warning(
                "%s: nodevigil is %s; %s (see docs/operations.md, descriptor limits)",
                self.what,
                explain(name),
                self.consequence,
            )

    def clear(self) -> None:
        """Things worked; ends an episode (logged) after ``quiet`` seconds without errors."""
        if self._since is None:
            return
        now = self._monotonic()
        if now - self._last < self._quiet:
            return
        lasted = self._last - self._since
        self._log.warning(
            "%s: nodevigil has its resources again; the episode lasted %.1fs (%d local errors)",
            self.what,
            lasted,
            self._during,
        )
        self._since, self._during = None, 0


# Descriptor exhaustion is a property of the process, so one tracker serves every prober.
PROBES = LocalTrouble("probes")


def raise_descriptor_limit(
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as systemd's LimitNOFILE sets both);
    return the (old, new) soft limit. Containers often start with a soft limit of 1,024."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft, soft
    try:
        setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, wanted, exc)
        return soft, soft
    log.info("raised the descriptor limit (RLIMIT_NOFILE) from %d to %d", soft, wanted)
    return soft, wanted


def descriptor_limit() -> int:
    """The process's soft descriptor limit now (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


__all__ = [
    "LOCAL_ERRNOS",
    "PROBES",
    "LocalTrouble",
    "descriptor_limit",
    "explain",
    "local_errno",
    "raise_descriptor_limit",
]
