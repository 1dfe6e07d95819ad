"""The state directory on a full disk, and on a read-only one.

The full disk is real: ``state_dir`` is a small tmpfs mount that the test fills until the
kernel answers ENOSPC. While it is full, a node fails and then the whole service: the
controller must keep moving traffic, say clearly that the state directory does not take
writes, and lose nothing. Once space is freed, the incident, its customer notice, the ledger
interval (from the outage's true start) and every event published meanwhile must arrive, and
every SQLite file must pass an integrity check.

A read-only disk cannot be made under a running daemon here (Linux refuses to remount a file
system read-only while files on it are open for writing), so it is tested at start: a clear
error and exit 1, no traceback. A disk going read-only while running takes the same code paths
as a full one (every write fails with an OSError / sqlite3 error).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodevigil.app.api.auth import token_digest
from tests.failover.daemons import poll_until
from tests.notify.receivers import WebhookReceiver
from tests.test_incidents_daemon import Api, start, stop
from tests.test_sla_daemon import Target

TOKEN = "state-dir-admin-token"


def mount_tmpfs(where: Path, *options: str) -> None:
    """Mount a tmpfs at ``where``; skip the test if this machine does not allow it."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    opts = ",".join(("size=16m", "mode=0700", *options))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs at ``tmp_path / "state"``."""
    state = tmp_path / "state"
    state.mkdir()
    mount_tmpfs(state)
    try:
        yield state
    finally:
        unmount(state)


def fill(disk: Path) -> Path:
    """Write zeros into ``disk/filler`` until the kernel says the disk is full."""
    filler = disk / "filler"
    chunk = b"\0" * (64 * 1024)
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # Small writes may still fit in the last partial page: take the crumbs too.
    with filler.open("ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 512)
    return filler


def write_config(path: Path, *, a: str, b: str, hook: WebhookReceiver) -> None:
    (path.parent / "acme.whsec").write_text(hook.secret + "\n")
    data: dict[str, Any] = {
        "timezone": "UTC",
        "state_dir": "state",
        "api": {
            "listen": "127.0.0.1:0",
            "tokens": [{"name": "ops", "role": "admin", "sha256": token_digest(TOKEN)}],
        },
        "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 1},
        "failover": {"cycle": "200ms", "hold_down": "1s", "site_hold_down": "1s"},
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": [
            {"name": "a", "site": "s", "probes": [{"type": "http", "url": a}]},
            {"name": "b", "site": "s", "probes": [{"type": "http", "url": b}]},
        ],
        "services": [{"name": "web", "sites": ["s"]}],
        "customers": [{"id": "acme", "services": ["web"], "plan": "gold"}],
        "notifiers": {
            "acme-hook": {"type": "webhook", "url": hook.url, "secret_file": "acme.whsec"}
        },
        "contingency_plans": {
            "gold": {
                "steps": [{"after": "0s", "notify": ["acme-hook"]}],
                "on_resolve": ["acme-hook"],
            }
        },
        "notifications": {"backoff_initial": "50ms", "backoff_max": "200ms"},
    }
    path.write_text(yaml.safe_dump(data))


async def events_of(api: Api, kind: str) -> list[dict[str, Any]]:
    code, body = await api.call("GET", f"/api/v1/events?kind={kind}&limit=1000", token=TOKEN)
    assert code == 200, body
    return list(body["events"])


async def metric(api: Api, name: str) -> float | None:
    _, text = await api.call("GET", "/metrics", token=None)
    for line in str(text).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def node_state(api: Api, node: str) -> str | None:
    _, body = await api.call("GET", "/api/v1/status", token=TOKEN)
    [entry] = [n for n in body["nodes"] if n["name"] == node]
    return entry["actual"]  # type: ignore[no-any-return]


async def test_a_full_disk_stops_no_failover_and_loses_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    a, b = Target(), Target()
    await a.start()
    await b.start()
    async with WebhookReceiver() as hook:
        path = tmp_path / "nodevigil.yaml"
        write_config(path, a=a.url, b=b.url, hook=hook)
        daemon, task, api = await start(path)
        try:
            filler = fill(small_disk)

            async def reported() -> bool:
                return bool(await events_of(api, "state.error"))

            await poll_until(reported, within=10, what="a state.error event")
            assert await metric(api, "nodevigil_state_writable") == 0
            [error] = await events_of(api, "state.error")
            assert error["subject"] == "state_dir"
            assert "No space left on device" in error["data"]["error"]

            # Traffic still moves: a node fails and is taken out; then the whole service.
            a.healthy = False

            async def drained(node: str) -> bool:
                return await node_state(api, node) == "maint"

            await poll_until(lambda: drained("a"), within=10, what="node a out of the LB")
            b.healthy = False  # the last node stays in (panic), but the service is down

            async def service() -> dict[str, Any]:
                _, status = await api.call("GET", "/api/v1/status", token=TOKEN)
                [web] = status["services"]
                return web  # type: ignore[no-any-return]

            async def unavailable() -> bool:
                return (await service())["available"] is False

            await poll_until(unavailable, within=10, what="the service judged unavailable")
            started = datetime.fromisoformat((await service())["unavailable_since"]).timestamp()
            assert not task.done()

            filler.unlink()  # the operator frees space

            async def recovered() -> bool:
                return bool(await events_of(api, "state.recovered"))

            await poll_until(recovered, within=10, what="a state.recovered event")
            assert await metric(api, "nodevigil_state_writable") == 1

            # What could not be written while the disk was full arrives now, exactly.
            await hook.wait_for(
                lambda: any(d.type == "incident.opened" for d in hook.accepted), timeout=15
            )

            async def ledger_open() -> bool:
                _, body = await api.call("GET", "/api/v1/sla/ledger", token=TOKEN)
                return bool(body["intervals"])

            await poll_until(ledger_open, within=15, what="the outage in the ledger")
            _, incidents = await api.call("GET", "/api/v1/incidents", token=TOKEN)
            [incident] = incidents["incidents"]
            _, ledger = await api.call("GET", "/api/v1/sla/ledger", token=TOKEN)
            [interval] = ledger["intervals"]
            assert interval["cause"] == "provider" and interval["end"] is None
            assert abs(datetime.fromisoformat(interval["start"]).timestamp() - started) < 0.01
            assert abs(datetime.fromisoformat(incident["started_at"]).timestamp() - started) < 0.01
            downs = [e["subject"] for e in await events_of(api, "node.down")]
            assert sorted(downs) == ["a", "b"]  # published while full, kept, listed

            a.healthy = b.healthy = True
            await hook.wait_for(
                lambda: any(d.type == "incident.resolved" for d in hook.accepted), timeout=15
            )
            ids = [d.id for d in hook.accepted]
            assert len(ids) == len(set(ids)) == 2, ids
        finally:
            await stop(daemon, task)
            await a.stop()
            await b.stop()
    for db in sorted(small_disk.glob("*.db")):
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), db
    assert not list(small_disk.glob(".*.tmp")), "a half-written file was left behind"


def test_a_read_only_state_dir_is_a_clear_error_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    mount_tmpfs(state, "ro")
    try:
        path = tmp_path / "nodevigil.yaml"
        data = {
            "state_dir": "state",
            "api": {"listen": "127.0.0.1:0"},
            "load_balancers": {"lb": {"type": "recording"}},
            "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
            "nodes": [
                {"name": "a", "site": "s", "probes": [{"type": "tcp", "address": "127.0.0.1:9"}]}
            ],
            "services": [{"name": "web", "sites": ["s"]}],
        }
        path.write_text(yaml.safe_dump(data))
        done = subprocess.run(
            [sys.executable, "-m", "nodevigil", "run", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr, done.stderr
        assert str(state) in done.stderr and "read-only" in done.stderr.lower(), done.stderr
    finally:
        unmount(state)
