"""``nodevigil demo``: the whole story through real HAProxy, BIND and Mosquitto, and without."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from failover.notify.webhook import parse_secret, sign
from nodevigil.app.cli import build_parser
from nodevigil.app.demo import world
from nodevigil.app.demo.receiver import check_signature, new_secret
from nodevigil.app.demo.servers import locate
from nodevigil.app.demo.settings import Endpoints, Timings, demo_config, node_names
from nodevigil.core.config import load_config

CREDIT_ROW = re.compile(
    r"^acme\s+web\s+\d{4}-\d\d-\d\d\s+(\d+)\s+1440\s+288\.00\s+(\d+\.\d\d)\s+CNY$", re.MULTILINE
)


async def demo(*args: str, limit: float = 80) -> tuple[int, str]:
    """``nodevigil demo ARGS`` as a subprocess (stdout is a pipe, so plain lines)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodevigil",
        "demo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.terminate()
        out, _ = await proc.communicate()
        pytest.fail(f"the demo did not finish within {limit:g}s:\n{out.decode()}")
    return proc.returncode or 0, out.decode()


def assert_story(out: str) -> None:
    """The milestones every run shows, with or without the real servers."""
    assert "world ready after" in out, out
    assert re.search(r"east-2 judged down [\d.]+s after it died; out of .* after it died", out)
    assert re.search(r"east-2 back in .* [\d.]+s after it came back", out), out
    assert "A 127.0.0.3 " in out and "east (127.0.0.2) withdrawn" in out, out
    assert re.search(r"incident #\d+ opened for customer acme", out), out
    assert "customer webhook received: incident.opened (signature valid)" in out, out
    assert "customer webhook received: incident.resolved (signature valid)" in out, out
    rows = CREDIT_ROW.findall(out)
    assert rows, out
    minutes, credit = rows[0]
    assert int(minutes) >= 1 and Decimal(credit) > 0, out
    assert "the story is over: every step reached its outcome" in out, out
    assert "FAILED" not in out, out


@pytest.mark.timeout(90)
async def test_the_story_through_real_haproxy_bind_and_mosquitto() -> None:
    for program, package in (
        ("haproxy", "haproxy"),
        ("named", "bind9"),
        ("mosquitto", "mosquitto"),
    ):
        if locate(program) is None:
            pytest.skip(f"{program} is missing: install the Debian package {package}")
    started = time.monotonic()
    code, out = await demo("--speed", "5", "--no-live")
    assert code == 0, out
    assert_story(out)
    assert "not found" not in out and "left out" not in out, out
    assert re.search(r"\d+ requests through HAProxy east \(http://127\.0\.0\.2:\d+/\)", out), out
    assert "out of HAProxy east" in out and "(server state read back: maint)" in out, out
    assert "BIND answers web.demo.example. A 127.0.0.3 " in out, out
    assert "BIND keeps answering 127.0.0.3: the last site is never withdrawn" in out, out
    assert re.search(r"/status\n", out) and "/metrics" in out and "admin token: " in out, out
    assert time.monotonic() - started < 60


@pytest.mark.timeout(90)
async def test_without_the_real_servers_it_says_so_and_still_completes() -> None:
    code, out = await demo("--speed", "5", "--no-live", "--without", "haproxy,bind,mosquitto")
    assert code == 0, out
    assert (
        "HAProxy left out (--without haproxy): using the in-process recording load balancer" in out
    )
    assert "BIND left out (--without bind): using the in-process recording DNS load balancer" in out
    assert "Mosquitto left out (--without mosquitto): no node agents" in out
    assert "no HAProxy: requests through a load balancer are not part of this run" in out
    assert "the in-process DNS stand-in answers web.demo.example. A 127.0.0.3 " in out
    assert_story(out)


async def test_a_workdir_in_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me\n")
    code, out = await demo("--no-live", "--workdir", str(tmp_path), limit=30)
    assert code == 1 and "is not empty" in out, out
    assert (tmp_path / "precious.txt").read_text() == "keep me\n"


def test_missing_programs_are_named_with_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world, "locate", lambda name: None)
    programs = world.Programs.detect(frozenset())
    assert programs.haproxy is None and programs.named is None and programs.mosquitto is None
    assert programs.notes == (
        "HAProxy not found (apt-get install haproxy): using the in-process recording load balancer",
        "BIND not found (apt-get install bind9): using the in-process recording DNS load balancer",
        "Mosquitto not found (apt-get install mosquitto): no node agents (http probes only)",
    )


@pytest.mark.parametrize("speed", [0.1, 1.0, 5.0, 20.0])
@pytest.mark.parametrize("real", [True, False])
def test_the_generated_config_passes_check_config(tmp_path: Path, speed: float, real: bool) -> None:
    ports = {name: 40000 + i for i, name in enumerate(node_names("east") + node_names("west"))}
    endpoints = Endpoints(
        node_ports=ports,
        haproxy_sockets={"east": tmp_path / "e.sock", "west": tmp_path / "w.sock"}
        if real
        else None,
        bind_server="127.0.0.1:5353" if real else None,
        tsig_key_file=tmp_path / "tsig.key" if real else None,
        mqtt_url="mqtt://127.0.0.1:1883" if real else None,
        webhook_url="http://127.0.0.1:9/hooks/acme",
    )
    path = tmp_path / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(demo_config(endpoints, Timings(speed), "t", "acme.whsec")))
    config = load_config(path)
    assert config.defaults.timeout < config.defaults.interval
    assert len(config.nodes) == 6 and [s.name for s in config.sites] == ["east", "west"]
    assert {lb.type for lb in config.load_balancers.values()} == (
        {"haproxy", "rfc2136"} if real else {"recording"}
    )
    assert (config.mqtt is not None) == real


def test_the_receiver_accepts_nodevigil_signatures_and_refuses_tampering() -> None:
    secret = new_secret()
    body = b'{"type":"incident.opened"}'
    stamp = int(time.time())
    headers = {
        "webhook-id": "msg-1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(parse_secret(secret), "msg-1", stamp, body),
    }
    assert check_signature(secret, headers, body, time.time()) is None
    assert check_signature(secret, headers, body + b" ", time.time()) == "no v1 signature matches"
    assert check_signature(new_secret(), headers, body, time.time()) == "no v1 signature matches"
    late = check_signature(secret, headers, body, time.time() + 3600)
    assert late is not None and "from now" in late


@pytest.mark.parametrize(
    "args", [["--speed", "0"], ["--speed", "fast"], ["--without", "haproxy,nginx"]]
)
def test_bad_demo_options_are_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["demo", *args])
    assert exit_info.value.code == 2
    assert "demo" in capsys.readouterr().err


# --- rich is the demo extra, not a dependency (issue 17, item 13) -----------------------------

NO_RICH = "import sys; sys.modules['rich'] = None\n"  # any ``import rich...`` fails


def test_nodevigil_runs_without_rich_as_the_container_image_has_it() -> None:
    """Every module but the demo's live view imports without rich (the image lacks it)."""
    code = NO_RICH + (
        "import pkgutil, importlib, nodevigil\n"
        "for m in pkgutil.walk_packages(nodevigil.__path__, 'nodevigil.'):\n"
        "    if m.name != 'nodevigil.app.demo.live':\n"
        "        importlib.import_module(m.name)\n"
        "from nodevigil.__main__ import main\n"
        "sys.argv = ['nodevigil', 'check-config', '-c', 'configs/example.yaml']\n"
        "main()\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_live_demo_without_rich_says_how_to_install_it() -> None:
    code = NO_RICH + (
        "import io\n"
        "from nodevigil.app.demo.view import Narrator, narrator_for\n"
        "out = io.StringIO()\n"
        "plain = Narrator(out)\n"
        "assert narrator_for(None, True, plain) is plain\n"
        "print(out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'nodevigil[demo]'" in done.stdout and "plain lines" in done.stdout


def test_the_live_demo_with_rich_is_the_live_table() -> None:
    from nodevigil.app.demo.live import LiveNarrator
    from nodevigil.app.demo.view import Narrator, narrator_for

    plain = Narrator()
    assert isinstance(narrator_for(world.World.__new__(world.World), True, plain), LiveNarrator)
    assert narrator_for(world.World.__new__(world.World), False, plain) is plain
