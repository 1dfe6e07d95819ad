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

Security, as production runs it: ``EtcdCluster(root, tls=make_tls(dir))`` serves clients over
https only and requires a client certificate signed by the throwaway CA (``--client-cert-auth``);
``enable_auth`` then turns on etcd's own users and roles (a ``root`` the harness logs in as, and
a user allowed one key prefix). Peers keep plain http on loopback: the tests are about clients.
Two things real etcd (3.4) requires here: each member's server certificate also serves as the
JSON gateway's own client certificate towards its member, so it carries ``clientAuth`` as well
as ``serverAuth``; and while auth is on the gateway answers HTTP 400 to a client certificate
that has a Common Name, so the clients' certificate has its names in subjectAltName only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
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


def gateway(
    url: str,
    path: str,
    body: dict[str, Any],
    *,
    timeout: float = 1.0,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """POST ``body`` to etcd's v3 JSON gateway at ``url`` (over https with ``context``, as the
    holder of auth ``token``); raise on any failure."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def b64(text: str) -> str:
    """A key as the gateway takes it."""
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and what it signed, in a test's directory (``make_tls``)."""

    ca_file: Path
    server_cert: Path  # every member's: 127.0.0.1 and localhost; serverAuth and clientAuth
    server_key: Path
    client_cert: Path  # names in subjectAltName only, no Common Name (see the module's notes)
    client_key: Path
    named_cert: Path  # the same with a Common Name, "nodevigil"
    named_key: Path
    other_ca_file: Path  # a CA that signed none of these: trusting it instead must fail

    def context(self) -> ssl.SSLContext:
        """A client context trusting the CA and presenting the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_tls(directory: Path) -> TlsFiles:
    """Make a CA, a server certificate for loopback and client certificates in ``directory``."""
    import trustme  # a test dependency; cryptography underneath

    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    names = ("ca", "server", "server.key", "client", "client.key", "named", "named.key", "other")
    files = TlsFiles(*(directory / (n if n.endswith(".key") else f"{n}.pem") for n in names))
    ca.cert_pem.write_to_path(str(files.ca_file))
    other.cert_pem.write_to_path(str(files.other_ca_file))
    for leaf, cert, key in (
        (ca.issue_cert("127.0.0.1", "localhost"), files.server_cert, files.server_key),
        (ca.issue_cert("nodevigil.test"), files.client_cert, files.client_key),
        (
            ca.issue_cert("nodevigil.test", common_name="nodevigil"),
            files.named_cert,
            files.named_key,
        ),
    ):
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
    return files


@dataclass
class Member:
    """One etcd process: its name, ports, data directory and (when running) the process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    scheme: str = "http"  # https when the cluster has TLS

    @property
    def client_url(self) -> str:
        """Where clients reach this member (the v3 JSON gateway is on the same port)."""
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

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
    tls: TlsFiles | None = None  # https for clients, a client certificate required
    root_password: str | None = None  # set by ``enable_auth``: the harness's own login
    _tokens: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        scheme = "https" if self.tls is not None else "http"
        for index in range(self.size):
            client, peer = ports[2 * index], ports[2 * index + 1]
            member = Member(f"m{index}", client, peer, self.root / f"m{index}", scheme=scheme)
            self.members.append(member)

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
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.server_cert}",
            f"--key-file={self.tls.server_key}",
            f"--trusted-ca-file={self.tls.ca_file}",
            "--client-cert-auth",
        ]

    def call(
        self, index: int, path: str, body: dict[str, Any], *, timeout: float = 1.0
    ) -> dict[str, Any]:
        """POST to member ``index``'s gateway as the harness: its client certificate with TLS,
        logged in as root once auth is on."""
        member = self.members[index]
        context = None if self.tls is None else self.tls.context()
        token = None
        if self.root_password is not None:
            token = self._tokens.get(index)
            if token is None:
                login = {"name": "root", "password": self.root_password}
                url = member.client_url
                answer = gateway(
                    url, "/v3/auth/authenticate", login, timeout=timeout, context=context
                )
                token = self._tokens[index] = str(answer["token"])
        try:
            return gateway(
                member.client_url, path, body, timeout=timeout, context=context, token=token
            )
        except (OSError, ValueError):
            self._tokens.pop(index, None)  # a restarted member forgot it: log in again
            raise

    def enable_auth(self, *, user: str, password: str, prefix: str) -> None:
        """Turn etcd's auth on: ``root`` (a password of the harness's) and ``user`` with
        ``password``, whose role may read and write the keys under ``prefix`` only."""
        from nodevigil.state.etcd.client import range_end

        role = f"{user}-role"
        root_password = secrets.token_hex(16)
        end = base64.b64encode(range_end(prefix.encode())).decode()
        grant = {"permType": "READWRITE", "key": b64(prefix), "range_end": end}
        for path, body in (
            ("auth/user/add", {"name": "root", "password": root_password}),
            ("auth/role/add", {"name": "root"}),
            ("auth/user/grant", {"user": "root", "role": "root"}),
            ("auth/role/add", {"name": role}),
            ("auth/role/grant", {"name": role, "perm": grant}),
            ("auth/user/add", {"name": user, "password": password}),
            ("auth/user/grant", {"user": user, "role": role}),
            ("auth/enable", {}),
        ):
            self.call(self.leader(), f"/v3/{path}", body)
        self.root_password = root_password
        self._tokens.clear()

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
            return self.call(index, "/v3/maintenance/status", {}, timeout=0.5)
        except (OSError, ValueError, KeyError):
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
        try:
            self.call(index, "/v3/kv/range", {"key": b64("/health")}, timeout=1.0)
        except (OSError, ValueError, KeyError):
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
def etcd_cluster(root: Path, *, tls: TlsFiles | None = None) -> Iterator[EtcdCluster]:
    """Start a 3-member cluster under ``root`` (clients over https with client certificates
    when ``tls``), wait until healthy, and kill it afterwards."""
    if not os.access(ETCD, os.X_OK):
        raise FileNotFoundError(f"{ETCD} is missing: install the Debian package etcd-server")
    cluster = EtcdCluster(root, tls=tls)
    try:
        for index in range(cluster.size):
            cluster.start(index)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.close()
