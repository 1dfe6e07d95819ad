"""A per-process cut (cuts.py): one process loses its targets, everyone else keeps them.

Plain child processes probe two local TCP servers in a loop and log each try's outcome: one
child runs under a cut identity, one as an ordinary root process. Cutting one server from the
identity makes that child's tries time out (a black hole: no refusal, no EPERM) while it still
reaches the other server and the other child and the test reach both; lifting the cut brings
it back, on new connections and on a connection held open across the cut. The table is gone
afterwards, and a table (and process) left by a killed run is removed by the next run.

Through the harness: a cuttable daemon cut off from the ``east`` site judges its nodes down
while another daemon still judges them up, and judges them up again once healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from nodevigil.app.demo.servers.process import Program, spawn
from tests.cluster.cuts import ProcessCut, nft, process_cut, require_cuts
from tests.cluster.harness import EAST_NODES, Harness, run_cluster, until
from tests.etcd_cluster import ETCD
from tests.failover.daemons import HAPROXY
from tests.postgres_server import BINDIR, PostgresAddress

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
# Each round: a new connection to each port (or one line over a held connection), 300 ms to
# answer; the outcome ("ok", "timeout" or the errno's name) logged as "<port> <outcome>".
PROBER = """
import errno, socket, sys, time
ports, hold = [int(p) for p in sys.argv[1].split(",")], sys.argv[2] == "hold"
held = {}
while True:
    for port in ports:
        try:
            if hold:
                if port not in held:
                    held[port] = socket.create_connection(("127.0.0.1", port), timeout=0.3)
                held[port].sendall(b"x")
                if held[port].recv(1) != b"x":
                    raise ConnectionResetError(errno.ECONNRESET, "closed")
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
                    if s.recv(1) != b"x":
                        raise ConnectionResetError(errno.ECONNRESET, "closed")
            outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno or 0, repr(e))
            held.pop(port, None)
        print(port, outcome, flush=True)
    time.sleep(0.1)
"""


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP server on loopback that greets each connection with ``x`` and echoes; its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(b"x")
            while data := await reader.read(64):
                writer.write(data[-1:])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


class Prober:
    """A child process's log of tries, read as (port, outcome) pairs."""

    def __init__(self, program: Program) -> None:
        self.program = program

    def results(self, since: int = 0) -> list[tuple[int, str]]:
        """Every logged try after byte ``since``."""
        with self.program.log_path.open("rb") as f:
            f.seek(since)
            lines = f.read().decode().splitlines()
        return [(int(p), o) for p, o in (line.split() for line in lines if " " in line)]

    def offset(self) -> int:
        """The log's length now."""
        return self.program.log_path.stat().st_size

    async def wait(self, port: int, outcome: str, *, since: int, count: int = 1) -> None:
        """Wait for ``count`` tries of ``port`` with ``outcome`` after byte ``since``."""

        async def seen() -> bool:
            return [o for p, o in self.results(since) if p == port].count(outcome) >= count

        await until(seen, within=10, what=f"{count} x {port} {outcome} ({self.program.name})")


async def start_prober(
    tmp_path: Path, name: str, ports: list[int], cut: ProcessCut | None, *, hold: bool = False
) -> Prober:
    argv = [sys.executable, "-c", PROBER, ",".join(map(str, ports)), "hold" if hold else "new"]
    log = tmp_path / f"{name}.log"
    if cut is None:
        return Prober(await spawn(name, argv, log, tmp_path))
    return Prober(await cut.spawn(name, argv, log, tmp_path))


async def reach(port: int) -> bool:
    """The test process itself connects and is greeted."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1)
    try:
        return await asyncio.wait_for(reader.read(1), 1) == b"x"
    finally:
        writer.close()


def tables() -> str:
    """``nft list tables``."""
    return nft("list", "tables")


@pytest.fixture
def cut() -> Iterator[ProcessCut]:
    with process_cut() as made:
        yield made
    assert made.table not in tables(), "the cut's table outlived it"


@contextlib.asynccontextmanager
async def probers(
    tmp_path: Path, ports: list[int], cut: ProcessCut, *, hold: bool = False
) -> AsyncIterator[tuple[Prober, Prober]]:
    """A prober under ``cut`` and a plain one, both stopped afterwards."""
    started: list[Prober] = []
    try:
        for name, identity in (("cut", cut), ("plain", None)):
            started.append(await start_prober(tmp_path, name, ports, identity, hold=hold))
        yield started[0], started[1]
    finally:
        for prober in started:
            await prober.program.stop()


async def test_a_cut_black_holes_one_process_only(tmp_path: Path, cut: ProcessCut) -> None:
    async with (
        echo_server() as cut_port,
        echo_server() as kept_port,
        probers(tmp_path, [cut_port, kept_port], cut) as (cutoff, plain),
    ):
        for prober in (cutoff, plain):
            for port in (cut_port, kept_port):
                await prober.wait(port, "ok", since=0)
        await asyncio.to_thread(cut.cut, [(HOST, cut_port)])
        assert await asyncio.to_thread(cut.targets) == {(HOST, cut_port)}
        since_cut, plain_since = cutoff.offset(), plain.offset()
        began = time.monotonic()
        await cutoff.wait(cut_port, "timeout", since=since_cut, count=4)
        print(f"\n4 timeouts in a row after the cut: {time.monotonic() - began:.2f}s")
        assert await reach(cut_port) and await reach(kept_port)
        tries = cutoff.results(since_cut)
        # The first try may have begun before the cut; every later one vanished.
        outcomes = [o for p, o in tries if p == cut_port][1:]
        assert set(outcomes) == {"timeout"}, outcomes
        assert {o for p, o in tries if p == kept_port} == {"ok"}, tries
        assert {o for _, o in plain.results(plain_since)} == {"ok"}
        dropped = await asyncio.to_thread(cut.dropped)
        print(f"packets dropped: {dropped}")
        assert dropped["to"] > 0

        await asyncio.to_thread(cut.heal)
        assert await asyncio.to_thread(cut.targets) == set()
        healed = time.monotonic()
        await cutoff.wait(cut_port, "ok", since=cutoff.offset(), count=2)
        print(f"reached again after the cut was lifted: {time.monotonic() - healed:.2f}s")


async def test_a_connection_held_across_a_cut_stalls_and_recovers(
    tmp_path: Path, cut: ProcessCut
) -> None:
    async with (
        echo_server() as port,
        probers(tmp_path, [port], cut, hold=True) as (cutoff, plain),
    ):
        await cutoff.wait(port, "ok", since=0, count=2)
        await asyncio.to_thread(cut.cut, [(HOST, port)])
        since = cutoff.offset()
        await cutoff.wait(port, "timeout", since=since, count=3)
        assert await reach(port)
        await asyncio.to_thread(cut.heal, [(HOST, port)])
        healed, since = time.monotonic(), cutoff.offset()
        await cutoff.wait(port, "ok", since=since, count=2)
        print(f"\nheld connection answers again {time.monotonic() - healed:.2f}s after heal")
        # The same connection came back: no try failed other than by timing out.
        assert {o for _, o in cutoff.results()} <= {"ok", "timeout"}
        assert {o for _, o in plain.results()} == {"ok"}


async def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    require_cuts()
    # A run that makes a cut identity, starts a process under it and is SIGKILLed.
    script = (
        "import subprocess, sys, time\n"
        "from tests.cluster.cuts import process_cut\n"
        "with process_cut() as c:\n"
        "    p = subprocess.Popen(['sleep', '120'], group=c.gid, stdout=subprocess.DEVNULL)\n"
        "    print(c.table, c.gid, p.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    orphan, gid = 0, -1
    try:
        line = await asyncio.wait_for(run.stdout.readline(), 20)  # type: ignore[union-attr]
        table, group, pid = line.decode().split()
        orphan, gid = int(pid), int(group)
        run.kill()
        await run.wait()
        assert table in tables()
        assert os.path.exists(f"/proc/{orphan}")
        with process_cut() as fresh:
            assert table not in tables()
            assert fresh.table in tables()

        async def gone() -> bool:
            return not _alive_in_group(orphan, gid)

        await until(gone, within=5, what="the killed run's process gone")
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
        if _alive_in_group(orphan, gid):  # the test failed before the sweep
            os.kill(orphan, signal.SIGKILL)


def _alive_in_group(pid: int, gid: int) -> bool:
    """True while process ``pid`` runs (not a zombie) with real group ``gid``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields["State"].split()[0] != "Z" and int(fields["Gid"].split()[0]) == gid


@pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server")
@pytest.mark.skipif(not HAPROXY.exists(), reason="haproxy is missing")
@pytest.mark.skipif(BINDIR is None, reason="PostgreSQL is missing")
@pytest.mark.timeout(90)
async def test_a_cuttable_daemon_loses_one_site_alone(
    tmp_path: Path, postgres: PostgresAddress
) -> None:
    extra = {"etcd": {"timeout": "0.3s"}}  # merged key by key: the endpoints stay
    async with run_cluster(
        tmp_path, postgres, east=EAST_NODES, cuttable=["ops-3"], cluster_extra=extra
    ) as cluster:
        config = yaml.safe_load(cluster.member("ops-1").config.read_text())
        assert config["cluster"]["etcd"]["endpoints"] == cluster.etcd.endpoints
        assert [s["name"] for s in config["sites"]] == ["sh", "east"]
        await until(lambda: verdicts(cluster, "ops-3", "up"), within=10, what="all up")
        began = time.time()
        pairs = await cluster.cut("ops-3", ["east"])
        assert pairs == {("127.0.0.1", cluster.http_node(e).port) for e in EAST_NODES}
        await until(lambda: verdicts(cluster, "ops-3", "down"), within=5, what="east down")
        assert (await cluster.node("ops-3", "sh-n1"))["verdict"] == "up"
        assert await verdicts(cluster, "ops-1", "up"), "another daemon lost the east site too"
        event = await cluster.wait_event(
            "ops-3", "node.down", subject="east-e1", since=began, within=5
        )
        print(f"\nops-3's node.down of east-e1: {event}")
        assert await cluster.heal("ops-3") == set()
        await until(lambda: verdicts(cluster, "ops-3", "up"), within=5, what="east up again")


async def verdicts(cluster: Harness, member: str, verdict: str) -> bool:
    """True when ``member`` judges every node of the ``east`` site ``verdict``."""
    views = [await cluster.node(member, f"east-{e}") for e in EAST_NODES]
    return all(v["verdict"] == verdict for v in views)
