"""HAProxy's runtime API (stats socket, ``level admin``) as a local load balancer.

Fencing (a cluster: ``authority``). The runtime API cannot check an epoch, so a change is sent
only while this leader's lease covers the command: before each attempt (retries included) it
must still may act with at least ``timeout`` seconds left before its local deadline, else
``LoadBalancerFenced`` and nothing is sent. Every change is idempotent (``set server ... state``
to a target state), so a command that does land late repeats what a leader wanted, never
undoes a newer one by itself. Reads are never fenced: standbys read back every cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from failover.lb.base import OperationalState, ServerState, ServerStatus
from failover.lb.errors import (
    LoadBalancerInvalid,
    LoadBalancerNotFound,
    LoadBalancerRejected,
    LoadBalancerTimeout,
    LoadBalancerUnavailable,
    check_lease,
    local_failure,
)
from failover.lb.retry import RetryPolicy, call_with_retries
from nodevigil.core.authority import Authority

# HAProxy's CLI splits commands on ';' and words on spaces: names must not carry either.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# srv_admin_state bits (include/haproxy/server-t.h, enum srv_admin).
_ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20  # forced, inherited, config, resolution failure
_ADMF_DRAIN = 0x08 | 0x10  # forced, inherited

# srv_op_state values (enum srv_state).
_OP_STATES = {
    0: OperationalState.DOWN,
    1: OperationalState.STARTING,
    2: OperationalState.UP,
    3: OperationalState.STOPPING,
}

# Answers of HAProxy 2.x that mean the backend or server is not there.
_NO_BACKEND = ("No such backend.", "Can't find backend.")
_NO_SERVER = ("No such server.",)
_READ_LIMIT = 16 * 1024 * 1024


def parse_servers_state(text: str, backend: str) -> dict[str, ServerStatus]:
    """Parse the answer of ``show servers state <backend>`` (format version 1)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":
        raise ValueError(f"unexpected 'show servers state' answer: {text.strip()[:200]!r}")
    columns: list[str] = []
    result: dict[str, ServerStatus] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            # The header names the columns; use it rather than fixed positions.
            columns = line.lstrip("# ").split()
            continue
        if not line.strip():
            continue
        if not columns:
            raise ValueError("'show servers state' answer has no column header")
        row = dict(zip(columns, line.split(), strict=False))
        if row.get("be_name") != backend:
            continue
        admin_bits = int(row["srv_admin_state"])
        if admin_bits & _ADMF_MAINT:
            admin = ServerState.MAINT
        elif admin_bits & _ADMF_DRAIN:
            admin = ServerState.DRAIN
        else:
            admin = ServerState.READY
        port_text = row.get("srv_port", "0")
        port = int(port_text) if port_text.isdigit() and port_text != "0" else None
        name = row["srv_name"]
        result[name] = ServerStatus(
            name=name,
            admin=admin,
            operational=_OP_STATES.get(int(row["srv_op_state"]), OperationalState.DOWN),
            address=row["srv_addr"],
            port=port,
        )
    return result


@dataclass(frozen=True, slots=True)
class ServerTraffic:
    """One server's session counters from ``show stat``: what traffic it carries."""

    name: str
    current: int  # scur: sessions open now
    total: int  # stot: sessions since HAProxy started (grows with every new one)


def parse_stat(text: str, backend: str) -> dict[str, ServerTraffic]:
    """Parse ``show stat`` CSV: the servers of ``backend`` with their ``scur`` and ``stot``."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"unexpected 'show stat' answer: {text.strip()[:200]!r}")
    # The header names the columns; HAProxy adds columns between versions, so use it.
    columns = lines[0][2:].split(",")
    try:
        px, sv = columns.index("pxname"), columns.index("svname")
        scur, stot = columns.index("scur"), columns.index("stot")
    except ValueError as exc:
        raise ValueError(f"'show stat' header lacks a column: {exc}") from exc
    result: dict[str, ServerTraffic] = {}
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) <= max(px, sv, scur, stot) or fields[px] != backend:
            continue
        name = fields[sv]
        if name in ("FRONTEND", "BACKEND"):
            continue
        result[name] = ServerTraffic(name, int(fields[scur] or 0), int(fields[stot] or 0))
    return result


def _check_name(kind: str, value: str) -> None:
    if not _SAFE_NAME.match(value):
        raise LoadBalancerInvalid(f"{kind} name {value!r} cannot be sent to HAProxy")


class HAProxyLoadBalancer:
    """Drives one HAProxy through its runtime API; one command per connection."""

    def __init__(
        self,
        *,
        name: str,
        socket_path: Path | None = None,
        address: tuple[str, int] | None = None,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        authority: Authority | None = None,
    ) -> None:
        if (socket_path is None) == (address is None):
            raise ValueError("give exactly one of socket_path and address")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._name = name
        self._socket_path = socket_path
        self._address = address
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._authority = authority

    @property
    def name(self) -> str:
        """The load balancer's name from the configuration."""
        return self._name

    @property
    def endpoint(self) -> str:
        """Where the runtime API is reached, for messages."""
        if self._socket_path is not None:
            return str(self._socket_path)
        assert self._address is not None
        return f"{self._address[0]}:{self._address[1]}"

    async def servers(self, backend: str) -> dict[str, ServerStatus]:
        """Read back every server of ``backend`` (admin and operational state, address)."""
        _check_name("backend", backend)
        answer = await self.command(f"show servers state {backend}")
        self._raise_for_answer(answer, backend, "")
        try:
            return parse_servers_state(answer, backend)
        except (ValueError, KeyError) as exc:
            raise LoadBalancerRejected(f"{self._name}: {exc}") from exc

    async def traffic(self, backend: str) -> dict[str, ServerTraffic]:
        """Read every server of ``backend``'s session counters (``show stat``, servers only)."""
        _check_name("backend", backend)
        # <proxy> 4 -1: the servers of that proxy only, not the whole process's stats.
        answer = await self.command(f"show stat {backend} 4 -1")
        text = answer.strip()
        if text.startswith(("No such proxy", "No such backend", "Unknown")):
            raise LoadBalancerNotFound(
                f"{self._name}: HAProxy has no backend {backend!r}", backend=backend
            )
        self._raise_for_answer(answer, backend, "")
        try:
            return parse_stat(answer, backend)
        except ValueError as exc:
            raise LoadBalancerRejected(f"{self._name}: {exc}") from exc

    async def set_state(self, backend: str, server: str, state: ServerState) -> None:
        """Set ``backend/server`` to ready, drain or maint."""
        _check_name("backend", backend)
        _check_name("server", server)
        state = ServerState(state)
        line = f"set server {backend}/{server} state {state.value}"

        async def fenced_once() -> str:
            # Immediately before each attempt: a retry must not outlive the lease either.
            check_lease(self._authority, self._name, repr(line), needs=self._timeout)
            return await self._command_once(line)

        answer = await call_with_retries(fenced_once, self._retry)
        self._raise_for_answer(answer, backend, server)
        if answer.strip():
            # A successful 'set server' answers nothing; any text is a refusal.
            raise LoadBalancerRejected(
                f"{self._name}: set {backend}/{server} {state.value}: {answer.strip()}"
            )

    async def close(self) -> None:
        """Nothing is held open between calls."""

    async def command(self, line: str) -> str:
        """Send one CLI command (with retries on transient trouble) and return the answer."""
        return await call_with_retries(lambda: self._command_once(line), self._retry)

    async def _command_once(self, line: str) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                if self._socket_path is not None:
                    reader, writer = await asyncio.open_unix_connection(
                        self._socket_path, limit=_READ_LIMIT
                    )
                else:
                    assert self._address is not None
                    reader, writer = await asyncio.open_connection(
                        *self._address, limit=_READ_LIMIT
                    )
                try:
                    writer.write(line.encode("ascii") + b"\n")
                    await writer.drain()
                    # Without 'prompt', HAProxy answers and closes: read to the end.
                    data = await reader.read(-1)
                finally:
                    writer.close()
                    # The peer closing first is the normal end of a command.
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError as exc:
            raise LoadBalancerTimeout(
                f"{self._name}: HAProxy at {self.endpoint} did not answer in {self._timeout:g}s"
            ) from exc
        except FileNotFoundError as exc:
            raise LoadBalancerUnavailable(
                f"{self._name}: HAProxy's stats socket {self.endpoint} does not exist "
                "(is HAProxy running?)"
            ) from exc
        except ConnectionRefusedError as exc:
            raise LoadBalancerUnavailable(
                f"{self._name}: nothing accepts connections on HAProxy's stats socket "
                f"{self.endpoint} (is HAProxy running?)"
            ) from exc
        except OSError as exc:
            unix = self._socket_path is not None
            local = local_failure(exc, self._name, f"HAProxy at {self.endpoint}", unix=unix)
            if local is not None:
                raise local from exc
            raise LoadBalancerUnavailable(
                f"{self._name}: HAProxy at {self.endpoint}: {exc.strerror or exc}"
            ) from exc
        return data.decode("utf-8", errors="replace")

    def _raise_for_answer(self, answer: str, backend: str, server: str) -> None:
        text = answer.strip()
        if text in _NO_BACKEND:
            raise LoadBalancerNotFound(
                f"{self._name}: HAProxy has no backend {backend!r}", backend=backend
            )
        if text in _NO_SERVER:
            raise LoadBalancerNotFound(
                f"{self._name}: HAProxy backend {backend!r} has no server {server!r}",
                backend=backend,
                server=server,
            )
        if text.startswith(("Permission denied", "Unknown command")):
            raise LoadBalancerRejected(f"{self._name}: {text}", code="cli")
