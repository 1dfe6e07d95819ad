"""The public status page over HTTP, rendered by headless Chromium, and served by the daemon."""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import os
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from nodevigil.app.api.app import bearer_auth, errors_as_json
from nodevigil.app.api.auth import token_digest
from nodevigil.app.api.status_page import SNAPSHOT, format_duration, render_html, routes
from tests.failover.daemons import free_port, poll_until

CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

OPERATIONAL: dict[str, Any] = {
    "generated_at": "2026-11-26T10:00:00Z",
    "services": [
        {"name": "web", "state": "operational", "since": None},
        {"name": "api", "state": "operational", "since": None},
    ],
    "incidents": [],
    "maintenance": [],
}

OUTAGE: dict[str, Any] = {
    "generated_at": "2026-11-26T10:00:00Z",
    "services": [
        {"name": "web", "state": "unavailable", "since": "2026-11-26T09:58:00Z"},
        {"name": "api", "state": "operational", "since": None},
    ],
    "incidents": [
        {
            "id": 3,
            "service": "web",
            "state": "identified",
            "maintenance": False,
            "started_at": "2026-11-26T09:58:00Z",
            "resolved_at": None,
            "cause": "provider",
            "updates": [
                {
                    "at": "2026-11-26T09:58:30Z",
                    "state": "investigating",
                    "message": "web is wholly unavailable: no site can serve it",
                    "author": "nodevigil",
                },
                {
                    "at": "2026-11-26T09:59:10Z",
                    "state": "identified",
                    "message": "A power feed failed in site sh; engineers are on it.",
                    "author": "ops",
                },
            ],
        },
        {
            "id": 2,
            "service": "api",
            "state": "resolved",
            "maintenance": False,
            "started_at": "2026-11-24T08:00:00Z",
            "resolved_at": "2026-11-24T09:05:00Z",
            "cause": "provider",
            "updates": [
                {
                    "at": "2026-11-24T09:05:00Z",
                    "state": "resolved",
                    "message": "api is available again",
                    "author": "nodevigil",
                }
            ],
        },
    ],
    "maintenance": [
        {
            "start": "2026-11-27T01:00:00Z",
            "end": "2026-11-27T03:00:00Z",
            "services": ["api"],
            "note": "kernel upgrade",
        }
    ],
}


class _Text(HTMLParser):
    """The text a reader sees: no tags, no <style> or <title>, whitespace collapsed."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "title", "script"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title", "script"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def visible_text(html: str) -> str:
    """The page's visible text on one line."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    return re.sub(r"\s+", " ", " ".join(parser.parts)).strip()


def section(text: str, title: str, following: str) -> str:
    """The visible text from heading ``title`` up to heading ``following``."""
    start = text.index(title)
    return text[start : text.index(following, start)]


@asynccontextmanager
async def serve(snapshot: Callable[[], Awaitable[dict[str, Any]]]) -> AsyncIterator[str]:
    """The status routes behind the API's own middlewares, on an ephemeral loopback port."""
    app = web.Application(middlewares=[errors_as_json, bearer_auth])
    app[SNAPSHOT] = snapshot
    app.add_routes(routes())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def fixed(snapshot: dict[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A snapshot callable that answers a copy of ``snapshot``."""

    async def take() -> dict[str, Any]:
        return copy.deepcopy(snapshot)

    return take


async def fetch(url: str) -> tuple[int, dict[str, str], str]:
    """GET without any Authorization header: status, headers, body."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.text()


async def fetch_json(url: str) -> tuple[int, dict[str, str], Any]:
    """GET a JSON document without any Authorization header: status, headers, body."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.content_type == "application/json"
        return response.status, dict(response.headers), await response.json()


async def test_operational_page_says_all_services_operational() -> None:
    async with serve(fixed(OPERATIONAL)) as base:
        status, headers, html = await fetch(base + "/status")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert '<meta http-equiv="refresh" content="30">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    # Self-contained: no script, no remote asset.
    assert not re.search(r"<script|<link|src=|https?://", html, re.IGNORECASE)
    text = visible_text(html)
    assert "All services operational" in text
    assert "as of 2026-11-26 10:00 UTC" in text
    services = section(text, "Services", "Open incidents")
    assert "web Operational" in services and "api Operational" in services
    assert "No open incidents." in text
    assert "No maintenance is scheduled." in text
    assert "No incidents in the last 7 days." in text


async def test_outage_page_shows_the_service_down_and_the_incident() -> None:
    async with serve(fixed(OUTAGE)) as base:
        status, _, html = await fetch(base + "/status")
    assert status == 200
    text = visible_text(html)
    assert "1 service unavailable" in text
    assert "All services operational" not in text
    services = section(text, "Services", "Open incidents")
    assert "web since 2026-11-26 09:58 UTC Unavailable" in services
    assert "api Operational" in services

    incident = section(text, "Open incidents", "Maintenance")
    assert "web Identified" in incident
    assert "Started 2026-11-26 09:58 UTC · ongoing for 2m" in incident
    # Updates newest first, each with its state, time (UTC) and message.
    assert incident.index("A power feed failed") < incident.index("web is wholly unavailable")
    assert "Identified · 2026-11-26 09:59 UTC · ops" in incident
    assert (
        "Investigating · 2026-11-26 09:58 UTC · nodevigil "
        "web is wholly unavailable: no site can serve it"
    ) in incident

    maintenance = section(text, "Maintenance", "Recent incidents")
    assert "api — kernel upgrade 2026-11-27 01:00 UTC to 2026-11-27 03:00 UTC Upcoming" in (
        maintenance
    )
    recent = text[text.index("Recent incidents") :]
    assert "api Resolved 2026-11-24 08:00 UTC to 2026-11-24 09:05 UTC · lasted 1h 05m" in recent
    assert "api is available again" in recent
    assert '<time datetime="2026-11-26T09:59:10Z">' in html


async def test_maintenance_headline_and_window_in_progress() -> None:
    snapshot = copy.deepcopy(OPERATIONAL)
    snapshot["services"][0].update(state="maintenance")
    snapshot["maintenance"] = [
        {
            "start": "2026-11-26T09:30:00Z",
            "end": "2026-11-26T11:00:00Z",
            "services": ["web"],
            "note": "switch replacement",
        }
    ]
    text = visible_text(render_html(snapshot))
    assert "1 service under maintenance" in text
    assert "web Maintenance" in text
    assert "web — switch replacement 2026-11-26 09:30 UTC to 2026-11-26 11:00 UTC In progress" in (
        text
    )


def test_headline_counts_and_unknown_states() -> None:
    snapshot = copy.deepcopy(OPERATIONAL)
    for service in snapshot["services"]:
        service.update(state="unavailable", since="2026-11-26T09:00:00+08:00")
    text = visible_text(render_html(snapshot))
    assert "2 services unavailable" in text
    assert "since 2026-11-26 01:00 UTC" in text  # other offsets are shown in UTC
    snapshot["services"] = [{"name": "web", "state": "unknown", "since": None}]
    assert "1 service not yet checked" in visible_text(render_html(snapshot))
    snapshot["services"] = []
    assert "No services are listed" in visible_text(render_html(snapshot))


def test_durations() -> None:
    assert [format_duration(s) for s in (-1, 45, 60, 3599, 3900, 86400 + 4 * 3600 + 59)] == [
        "0s",
        "45s",
        "1m",
        "59m",
        "1h 05m",
        "1d 4h",
    ]


async def test_status_json_is_the_snapshot() -> None:
    async with serve(fixed(OUTAGE)) as base:
        status, headers, body = await fetch_json(base + "/status.json")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    assert body == OUTAGE


async def test_everything_from_the_snapshot_is_escaped() -> None:
    snapshot = copy.deepcopy(OUTAGE)
    hostile = "<script>alert(1)</script>"
    snapshot["services"][0]["name"] = 'w<b>e</b>b "&"'
    snapshot["incidents"][0]["service"] = 'w<b>e</b>b "&"'
    snapshot["incidents"][0]["updates"][1]["message"] = f"fixed {hostile} soon"
    snapshot["incidents"][0]["updates"][1]["author"] = "<img src=x onerror=alert(2)>"
    snapshot["incidents"][0]["updates"][0]["at"] = f'"><{hostile}'  # not even a time
    snapshot["incidents"][0]["state"] = "<i>weird</i>"
    snapshot["maintenance"][0]["note"] = hostile
    snapshot["maintenance"][0]["services"] = [hostile]
    async with serve(fixed(snapshot)) as base:
        status, _, html = await fetch(base + "/status")
    assert status == 200
    assert "<script" not in html.lower()
    assert "<img" not in html and "<b>e</b>" not in html and "<i>weird" not in html
    assert "fixed &lt;script&gt;alert(1)&lt;/script&gt; soon" in html
    assert "w&lt;b&gt;e&lt;/b&gt;b &quot;&amp;&quot;" in html
    text = visible_text(html)
    assert f"fixed {hostile} soon" in text  # shown as text, verbatim
    assert "<img src=x onerror=alert(2)>" in text
    assert "<i>weird</i>" in text


async def test_a_failing_snapshot_answers_503_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = True

    async def take() -> dict[str, Any]:
        if failing:
            raise RuntimeError("the incident store is locked")
        return copy.deepcopy(OPERATIONAL)

    caplog.set_level(logging.INFO, logger="nodevigil.app.api.status_page")
    async with serve(take) as base:
        for _ in range(2):
            status, headers, html = await fetch(base + "/status")
            assert status == 503
            assert headers["Cache-Control"] == "no-cache"
            assert "Status temporarily unavailable" in visible_text(html)
            assert "Traceback" not in html and "locked" not in html
            status, _, body = await fetch_json(base + "/status.json")
            assert status == 503
            assert body == {"error": "status temporarily unavailable; try again shortly"}
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 1 and failures[0].exc_info is not None
        failing = False
        status, _, html = await fetch(base + "/status")
        assert status == 200 and "All services operational" in visible_text(html)
    assert any("works again" in r.getMessage() for r in caplog.records)


# --- headless Chromium ------------------------------------------------------------------------


@pytest.fixture
def chromium_profile() -> Iterator[Path]:
    """A throwaway Chromium profile directory (Chromium itself must be installed)."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: install the Debian package chromium")
    with tempfile.TemporaryDirectory(prefix="nodevigil-chromium-") as tmp:
        yield Path(tmp)


async def chromium(profile: Path, *args: str, within: float = 40) -> str:
    """Run headless Chromium with ``args``; return its stdout (fail on error or timeout)."""
    process = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile / 'profile'}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.communicate()
        pytest.fail(f"chromium {' '.join(args)} did not finish within {within:g}s")
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


async def screenshot(profile: Path, url: str, keep: Path) -> Path:
    """A 1280x900 screenshot of ``url``, checked and copied to ``keep``."""
    shot = profile / "status.png"
    await chromium(profile, f"--screenshot={shot}", "--window-size=1280,900", url)
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
    shutil.copyfile(shot, keep)
    print(f"status page screenshot: {keep}")
    return keep


async def test_chromium_renders_the_outage(chromium_profile: Path, tmp_path: Path) -> None:
    async with serve(fixed(OUTAGE)) as base:
        dom = await chromium(chromium_profile, "--dump-dom", base + "/status")
        text = visible_text(dom)
        assert "1 service unavailable" in text
        assert "web since 2026-11-26 09:58 UTC Unavailable" in text
        assert "web is wholly unavailable: no site can serve it" in text
        await screenshot(chromium_profile, base + "/status", tmp_path / "status.png")


def with_history(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` with 90 days of history: web lost 120 minutes 60 days ago and 5 minutes
    30 days ago, and has no data for its first 10 days; api never lost a minute."""
    out = copy.deepcopy(snapshot)
    first = datetime.date(2026, 11, 26) - datetime.timedelta(days=89)
    for service in out["services"]:
        days = []
        for n in range(90):
            day = (first + datetime.timedelta(days=n)).isoformat()
            if service["name"] == "web" and n < 10:
                days.append({"date": day, "minutes": 0, "unavailable_minutes": None})
                continue
            lost = {29: 120, 59: 5}.get(n, 0) if service["name"] == "web" else 0
            minutes = 600 if n == 89 else 1440  # today: ten hours gone by
            days.append({"date": day, "minutes": minutes, "unavailable_minutes": lost})
        service["history"] = days
        service["uptime"] = 99.84 if service["name"] == "web" else 100.0
    out["history"] = {"days": 90, "timezone": "Asia/Shanghai"}
    return out


def png_colours(data: bytes) -> dict[tuple[int, int, int], int]:
    """How many pixels of each colour an 8-bit RGB(A) PNG has (enough for Chromium's shots)."""
    assert data.startswith(PNG_SIGNATURE)
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    step = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * step
    counts: dict[tuple[int, int, int], int] = {}
    previous = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - step] if i >= step else 0
            b = previous[i]
            c = previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(0, stride, step):
            rgb = (line[x], line[x + 1], line[x + 2])
            counts[rgb] = counts.get(rgb, 0) + 1
        previous = line
    return counts


def pixels_near(counts: dict[tuple[int, int, int], int], hex_colour: str) -> int:
    """Pixels within 6 of ``#rrggbb`` on every channel."""
    want = bytes.fromhex(hex_colour.lstrip("#"))
    return sum(
        n
        for rgb, n in counts.items()
        if all(abs(v - w) <= 6 for v, w in zip(rgb, want, strict=True))
    )


def test_history_bars_say_each_day_and_the_uptime() -> None:
    html = render_html(with_history(OPERATIONAL))
    bars = re.findall(r'<span class="(bar-[a-z]+)" title="([^"]*)"></span>', html)
    assert len(bars) == 180  # 90 a service
    web = bars[:90]
    assert [css for css, _ in web[:10]] == ["bar-none"] * 10
    assert web[0][1] == "2026-08-29: no data"
    assert web[29] == ("bar-major", "2026-09-27: 120 min unavailable (91.66%)")
    assert web[59] == ("bar-minor", "2026-10-27: 5 min unavailable (99.65%)")
    assert web[89] == ("bar-ok", "2026-11-26: no downtime (100%)")
    assert {css for css, _ in bars[90:]} == {"bar-ok"}
    text = visible_text(html)
    services = section(text, "Services", "Open incidents")
    assert "web Operational 90 days ago 99.84% uptime Today" in services
    assert "api Operational 90 days ago 100% uptime Today" in services
    assert "each bar of a service's history is one day in Asia/Shanghai" in text
    # Without a history (an older snapshot) the page shows none.
    assert "bar-" not in render_html(OPERATIONAL).split("</style>")[1]


async def test_chromium_draws_the_history_bars(chromium_profile: Path, tmp_path: Path) -> None:
    async with serve(fixed(with_history(OPERATIONAL))) as base:
        dom = await chromium(chromium_profile, "--dump-dom", base + "/status")
        bars = re.findall(r'<div class="bars" role="img" aria-label="([^"]*)">', dom)
        assert bars == ["90 days: 99.84% uptime", "90 days: 100% uptime"]
        assert dom.count('class="bar-major"') == 1 and dom.count('class="bar-minor"') == 1
        shot = await screenshot(chromium_profile, base + "/status", tmp_path / "history.png")
    counts = png_colours(shot.read_bytes())
    # Painted, not just present: the red and amber days (no other red or amber on this page)
    # are visible bars, each at least a few pixels wide and 2rem high.
    assert pixels_near(counts, "#cf222e") >= 3 * 30
    assert pixels_near(counts, "#d4a72c") >= 3 * 30
    assert pixels_near(counts, "#1a7f37") > 100 * pixels_near(counts, "#cf222e")


# --- the real daemon ---------------------------------------------------------------------------


def write_daemon_config(path: Path, closed_port: int) -> None:
    """One node whose only probe hits a closed port: its site, the service's only one, fails."""
    data: dict[str, Any] = {
        "state_dir": str(path.parent / "state"),
        "api": {
            "listen": "127.0.0.1:0",
            "tokens": [{"name": "ops", "role": "admin", "sha256": token_digest("admin-token")}],
        },
        "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 1},
        "failover": {"cycle": "200ms"},
        "sites": [{"name": "sh", "address": "192.0.2.1"}],
        "nodes": [
            {
                "name": "sh-1",
                "site": "sh",
                "probes": [{"type": "tcp", "address": f"127.0.0.1:{closed_port}"}],
            }
        ],
        "services": [{"name": "web", "sites": ["sh"]}],
        "customers": [{"id": "acme", "services": ["web"]}],
    }
    path.write_text(yaml.safe_dump(data))


async def test_the_daemon_serves_its_outage_publicly(
    chromium_profile: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    write_daemon_config(config, free_port())
    log_path = tmp_path / "nodevigil.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nodevigil",
            "run",
            "-c",
            str(config),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        base = ""

        async def listening() -> bool:
            nonlocal base
            assert process.returncode is None, log_path.read_text()
            found = re.search(r"API listening on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            base = found.group(1) if found else ""
            return bool(base)

        await poll_until(listening, within=15, interval=0.05, what="the daemon's API")

        async def ready() -> bool:
            status, _, _ = await fetch(base + "/readyz")
            return status == 200

        await poll_until(ready, within=15, interval=0.05, what="the daemon ready")
        page = ""

        async def outage_shown() -> bool:
            nonlocal page
            status, _, html = await fetch(base + "/status")
            page = visible_text(html)
            return status == 200 and "1 service unavailable" in page and "Investigating" in page

        try:
            await poll_until(outage_shown, within=20, interval=0.1, what="the outage on /status")
        except TimeoutError:
            pytest.fail(f"/status shows: {page}\n--- daemon log ---\n{log_path.read_text()}")
        assert "web" in section(page, "Services", "Open incidents")
        assert "Unavailable" in section(page, "Services", "Open incidents")
        assert "web Investigating" in section(page, "Open incidents", "Maintenance")
        status, headers, body = await fetch(base + "/status.json")
        assert status == 200 and headers["Cache-Control"] == "no-cache"
        assert "token" not in body and "sha256" not in body

        # The history comes from the ledger: a fresh one knows only today, which the open
        # outage already costs a minute or more (counted up to now, as the credits count it).
        snapshot: dict[str, Any] = {}

        async def outage_in_history() -> bool:
            nonlocal snapshot
            _, _, snapshot = await fetch_json(base + "/status.json")
            days = snapshot["services"][0]["history"]
            return bool(days[-1]["unavailable_minutes"])

        await poll_until(outage_in_history, within=15, interval=0.2, what="today in the history")
        assert snapshot["history"] == {"days": 90, "timezone": "UTC"}
        days = snapshot["services"][0]["history"]
        assert len(days) == 90 and days[-1]["date"] == time.strftime("%Y-%m-%d", time.gmtime())
        assert all(d["unavailable_minutes"] is None for d in days[:-1])
        assert snapshot["services"][0]["uptime"] < 100
        dom = await chromium(chromium_profile, "--dump-dom", base + "/status")
        assert re.search(r'class="bar-(minor|major)" title="[0-9-]+: \d+ min unavailable', dom)
        await screenshot(chromium_profile, base + "/status", tmp_path / "daemon-status.png")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                code = await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert code == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text()
