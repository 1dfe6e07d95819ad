"""A per-process network cut: packets between ONE process and chosen (address, port) targets
vanish, while every other process on the machine still reaches those targets.

How a process is singled out: it runs as root, like the test, but with a primary group of its
own (a *cut identity*: an unused gid, ``asyncio.create_subprocess_exec(..., group=gid)``).
nftables' ``meta skgid`` matches a socket by the group of the process that made it, so one
table per identity can tell its packets apart from everyone else's on the same loopback::

    output: ct direction original  meta skgid GID  ip daddr . th dport @targets  ct mark set GID
    input:  ct mark GID  ct direction original  ip daddr . th dport @targets  drop
    input:  ct mark GID  ct direction reply     ip saddr . th sport @targets  drop

Why the drops are in the *input* hook, after a conntrack mark set on output (``meta skgid``
is only known on output: on loopback the socket is detached before input): a drop by the
sender's own output hook is reported to it for UDP (``sendto`` fails at once with EPERM), not
lost in flight; a drop on input is silence either way. Measured here (kernel 6.18, nftables
1.0.6): TCP ``connect`` and ``send`` time out under both hooks (TCP swallows the output
error and retransmits); a UDP ``sendto`` failed with EPERM under the output drop and
succeeded (and was lost) under the input drop. Connections opened before the cut are cut too
(their next packet is marked and dropped), and come back when it is lifted (TCP retransmits
on the same connection), as with a pulled cable. Only connections the process *opens* are
marked, so the test can still reach a cut process's own API.

Why a group and not the alternatives (each tried here):

- a uid of its own (``meta skuid``): the process then needs every file it reads: the
  interpreter (here under /root, mode 0700: another uid cannot even exec the venv's python),
  the PostgreSQL password file and TSIG key (0600), HAProxy's admin socket. A gid changes
  nothing the process can do (root's file access does not depend on its group).
- a cgroup v2 per process (``socket cgroupv2``): nftables 1.0.6 resolves the path under
  /sys/fs/cgroup, where this host mounts cgroup v1 (v2 is at /sys/fs/cgroup/unified, so
  the rule must say ``"unified/name"``); containers often mount cgroupfs read-only; the
  mechanism depends on exactly the host layout CI cannot promise.
- a network namespace per process: the nodes, etcd, PostgreSQL, HAProxy and the webhook
  receiver all listen on 127.0.0.1, which another namespace cannot reach; everything would
  have to move to veth addresses, and the test reach the daemon's API through them.

Targets are IPv4 (address, port) pairs; a pair matches TCP and UDP alike. Unix sockets (for
example HAProxy's admin socket) cannot be cut this way.

Each identity's table is named ``nvcut_<pid>_<gid>`` (the pid of the test process) and
deleted in ``finally``; tables of earlier runs whose process is gone are deleted by the next
``process_cut()``, and processes still running with their group are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodevigil.app.demo.servers.process import Program

PREFIX = "nvcut"  # every table this module makes is inet nvcut_<pid>_<gid>
GID_FIRST, GID_COUNT = 2_080_000_000, 1_000_000  # far above any system or user group
Target = tuple[str, int]  # (IPv4 address, port)


def missing_requirements() -> str | None:
    """Why cuts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "per-process cuts need root (nftables and setgid): run the tests as root"
    if shutil.which("nft") is None:
        return "nft is missing: install the Debian package nftables"
    return None


def require_cuts() -> None:
    """Skip the calling test with a clear reason when cuts cannot be made."""
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)


def nft(*args: str, input: str | None = None) -> str:
    """Run ``nft``; raise with its stderr when it fails."""
    done = subprocess.run(["nft", *args], input=input, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def target(address: str, port: int) -> Target:
    """A checked target: an IPv4 address and a port."""
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not between 1 and 65535")
    return str(ipaddress.IPv4Address(address)), port


@dataclass(frozen=True)
class ProcessCut:
    """A cut identity: processes started with ``spawn`` (or ``group=gid``) are cut off from
    the targets given to ``cut`` until ``heal``; nothing else on the machine is."""

    gid: int
    table: str

    def cut(self, targets: Iterable[Target]) -> None:
        """Black-hole these targets (besides any already cut) from now on."""
        elements = [target(a, p) for a, p in targets]
        if elements:
            nft("add", "element", "inet", self.table, "targets", _elements(elements))

    def heal(self, targets: Iterable[Target] | None = None) -> None:
        """Lift the cut from these targets (all when None)."""
        if targets is None:
            nft("flush", "set", "inet", self.table, "targets")
            return
        present = self.targets()
        elements = [t for t in (target(a, p) for a, p in targets) if t in present]
        if elements:
            nft("delete", "element", "inet", self.table, "targets", _elements(elements))

    def targets(self) -> set[Target]:
        """The targets cut right now, read back from nftables."""
        listing = json.loads(nft("-j", "list", "set", "inet", self.table, "targets"))
        found: set[Target] = set()
        for item in listing["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                address, port = element["concat"]
                found.add((str(address), int(port)))
        return found

    def dropped(self) -> dict[str, int]:
        """Packets dropped since the identity was made: ``to`` the targets, ``from`` them."""
        listing = json.loads(nft("-j", "list", "table", "inet", self.table))
        out: dict[str, int] = {}
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule is None or "comment" not in rule:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    out[rule["comment"]] = int(expr["counter"]["packets"])
        return out

    async def spawn(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> Program:
        """Start ``argv`` under this identity, as ``process.spawn`` starts any program: in
        ``cwd``, stdout and stderr appended to ``log_path``, ``env`` added to ours."""
        log = await asyncio.to_thread(log_path.open, "ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=cwd,
                env=None if env is None else {**os.environ, **env},
                group=self.gid,
            )
        finally:
            log.close()
        return Program(name, process, log_path)


def _elements(targets: list[Target]) -> str:
    return "{ " + ", ".join(f"{address} . {port}" for address, port in targets) + " }"


def _ruleset(table: str, gid: int) -> str:
    return f"""
table inet {table} {{
    set targets {{ type ipv4_addr . inet_service; }}
    chain output {{
        type filter hook output priority 0; policy accept;
        ct direction original meta skgid {gid} ip daddr . th dport @targets ct mark set {gid}
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        ct mark {gid} ct direction original ip daddr . th dport @targets counter drop comment "to"
        ct mark {gid} ct direction reply ip saddr . th sport @targets counter drop comment "from"
    }}
}}
"""


def _our_tables() -> list[tuple[str, int, int]]:
    """(table, pid, gid) of every table of this module, of any run."""
    found = []
    for match in re.finditer(rf"^table inet ({PREFIX}_(\d+)_(\d+))$", nft("list", "tables"), re.M):
        found.append((match.group(1), int(match.group(2)), int(match.group(3))))
    return found


def _pids_in_group(gid: int) -> list[int]:
    """Processes whose real group is ``gid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Gid:"):
                    if int(line.split()[1]) == gid:
                        pids.append(int(entry.name))
                    break
    return pids


def sweep_stale() -> None:
    """Delete the tables of earlier runs whose process is gone, and kill what still runs
    with their groups (daemons a killed run left behind)."""
    for table, pid, gid in _our_tables():
        if os.path.exists(f"/proc/{pid}"):
            continue
        for leftover in _pids_in_group(gid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
        with contextlib.suppress(RuntimeError):  # another run may sweep it at the same time
            nft("delete", "table", "inet", table)


def _pick_gid(rng: random.Random) -> int:
    """A group nobody uses: not in the group database, no process, no table of ours."""
    taken = {gid for _, _, gid in _our_tables()}
    for _ in range(100):
        gid = GID_FIRST + rng.randrange(GID_COUNT)
        if gid in taken or _pids_in_group(gid):
            continue
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
    raise RuntimeError("no unused group for a cut identity")


@contextlib.contextmanager
def process_cut() -> Iterator[ProcessCut]:
    """A new cut identity with nothing cut yet; its table is deleted afterwards, whether the
    test passed, failed or was interrupted. Skips the test where cuts cannot be made."""
    require_cuts()
    sweep_stale()
    gid = _pick_gid(random.Random())
    table = f"{PREFIX}_{os.getpid()}_{gid}"
    nft("-f", "-", input=_ruleset(table, gid))
    try:
        yield ProcessCut(gid, table)
    finally:
        with contextlib.suppress(RuntimeError):
            nft("delete", "table", "inet", table)
