"""A real 3-member etcd cluster for tests: Debian's ``etcd`` on loopback, ephemeral ports.

Each member listens for clients and peers on ports of its own, keeps its data in a temporary
directory and runs as this process's child, so a test can stop, SIGKILL, restart, pause
(SIGSTOP) or resume one member, or stop two to lose quorum.

Timing: ``--heartbeat-interval 50 --election-timeout 500`` (etcd's defaults are 100 and 1000)
make the first election and every re-election after a killed leader take well under a second.
That is safe here because the peers talk over loopback, where a round trip is microseconds: the
rule etcd states (election timeout >= 10 x round trip, heartbeat ~ round trip) holds with a
wide margin, even on a busy CI machine. Members are left out of the process group of pytest's
workers (``start_new_session``) so a Ctrl-C reaches them only through ``close()``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ETCD = Path(shutil.which("etcd") or "/usr/bin/etcd")
HEARTBEAT_MS = 50
ELECTION_MS = 500
STARTUP_TIMEOUT = 20.0

T = TypeVar("T")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on loopback that nothing listens on right now: all bound at
    once, so the kernel cannot hand the same one out twice."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def poll(what: str, probe: Callable[[], T | None], *, timeout: float, every: float = 0.05) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"etcd test cluster: {what} not within {timeout:.1f}s")
        time.sleep(every)


def gateway(url: str, path: str, body: dict[str, Any], *, timeout: float = 1.0) -> dict[str, Any]:
    """POST ``body`` to etcd's v3 JSON gateway at ``url``; raise on any failure."""
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@dataclass
class Member:
    """One etcd process: its name, ports, data directory and (when running) the process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def client_url(self) -> str:
        """Where clients reach this member (the v3 JSON gateway is on the same port)."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """Where the other members reach this one."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        """True while the process lives (paused counts as running)."""
        return self.process is not None and self.process.poll() is None


@dataclass
class EtcdCluster:
    """Three members started with ``--initial-cluster``; methods act on one member by index."""

    root: Path
    size: int = 3
    token: str = field(default_factory=lambda: f"nodevigil-test-{uuid.uuid4().hex[:8]}")
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        for index in range(self.size):
            client, peer = ports[2 * index], ports[2 * index + 1]
            self.members.append(Member(f"m{index}", client, peer, self.root / f"m{index}"))

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, in member order."""
        return [member.client_url for member in self.members]

    def _command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            str(ETCD),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",  # ignored once the data directory exists
            f"--initial-cluster-token={self.token}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]

    def start(self, index: int) -> None:
        """Start member ``index`` (again: it keeps its data directory); does not wait."""
        member = self.members[index]
        if member.running:
            return
        member.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.root / f"{member.name}.log").open("ab")
        with log:
            member.process = subprocess.Popen(
                self._command(member),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        member.paused = False

    def _signal(self, index: int, signum: int) -> None:
        member = self.members[index]
        if member.process is not None and member.running:
            member.process.send_signal(signum)

    def stop(self, index: int) -> None:
        """Stop member ``index`` cleanly (SIGTERM) and wait for it to exit."""
        self.resume(index)
        self._signal(index, signal.SIGTERM)
        self._reap(index)

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` and wait for it to exit."""
        self._signal(index, signal.SIGKILL)
        self._reap(index)

    def _reap(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None:
            try:
                member.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
        member.process = None
        member.paused = False

    def pause(self, index: int) -> None:
        """SIGSTOP member ``index``: its sockets stay open but it answers nothing."""
        self._signal(index, signal.SIGSTOP)
        self.members[index].paused = True

    def resume(self, index: int) -> None:
        """SIGCONT member ``index`` if it is paused."""
        if self.members[index].paused:
            self._signal(index, signal.SIGCONT)
            self.members[index].paused = False

    def stop_quorum(self) -> list[int]:
        """Stop two members (the leader among them when known): quorum is lost."""
        leader = self.leader_or_none()
        order = sorted(range(self.size), key=lambda i: i != leader)
        stopped = order[:2]
        for index in stopped:
            self.stop(index)
        return stopped

    def status(self, index: int) -> dict[str, Any] | None:
        """Member ``index``'s ``/v3/maintenance/status``, or None when it does not answer."""
        member = self.members[index]
        if not member.running or member.paused:
            return None
        try:
            return gateway(member.client_url, "/v3/maintenance/status", {}, timeout=0.5)
        except (OSError, ValueError):
            return None

    def leader_or_none(self) -> int | None:
        """The index of the raft leader as the running members report it, or None."""
        ids: dict[str, int] = {}
        leaders: set[str] = set()
        for index in range(self.size):
            status = self.status(index)
            if status is None:
                continue
            ids[str(status["header"]["member_id"])] = index
            if status.get("leader"):
                leaders.add(str(status["leader"]))
        for leader in leaders:
            if leader in ids:
                return ids[leader]
        return None

    def leader(self, timeout: float = 5.0) -> int:
        """The index of the raft leader, waiting up to ``timeout`` for one to be elected."""
        return poll("a raft leader", self.leader_or_none, timeout=timeout)

    def linearizable_get(self, index: int) -> bool:
        """True when a linearizable read through member ``index`` succeeds (quorum + leader)."""
        member = self.members[index]
        if not member.running or member.paused:
            return False
        key = base64.b64encode(b"/health").decode()
        try:
            gateway(member.client_url, "/v3/kv/range", {"key": key}, timeout=1.0)
        except (OSError, ValueError):
            return False
        return True

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until a linearizable get succeeds through every running member."""

        def healthy() -> bool | None:
            for index, member in enumerate(self.members):
                self._check_alive(index)  # a member that exited is an error, not "healthy"
                if member.running and not self.linearizable_get(index):
                    return None
            return True

        poll("all running members healthy", healthy, timeout=timeout)

    def _check_alive(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None and member.process.poll() is not None:
            log = (self.root / f"{member.name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"etcd member {member.name} exited:\n{log}")

    def restore(self) -> None:
        """Resume paused members, start stopped ones and wait until all three are healthy."""
        for index, member in enumerate(self.members):
            self.resume(index)
            if not member.running:
                self.start(index)
        self.wait_healthy()

    def close(self) -> None:
        """Kill every member."""
        for index in range(self.size):
            self.resume(index)
            self.kill(index)


@contextlib.contextmanager
def etcd_cluster(root: Path) -> Iterator[EtcdCluster]:
    """Start a 3-member cluster under ``root``, wait until healthy, and kill it afterwards."""
    if not os.access(ETCD, os.X_OK):
        raise FileNotFoundError(f"{ETCD} is missing: install the Debian package etcd-server")
    cluster = EtcdCluster(root)
    try:
        for index in range(cluster.size):
            cluster.start(index)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.close()
