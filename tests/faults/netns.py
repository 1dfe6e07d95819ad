"""A lossy network in network namespaces: random packet loss without netem.

The kernel here has no ``netem``, so loss comes from nftables: ``meta random < N drop``
drops a packet with probability N / 2**32. The rule sits in a *wire* namespace that routes
between the test process (in the host namespace) and a *nodes* namespace where the target
servers run::

    host (probes) --veth-- wire (forwards; drops ~20 % each way) --veth-- nodes (servers)

Why a wire in the middle rather than input/output rules in the nodes' own namespace: a packet
dropped by a sender's own output hook is reported to the sending socket (EPERM) instead of
vanishing in flight, so TCP does not see it as loss the way it sees a packet lost on a cable.
In the forward chain of a router, a drop is real loss in both directions (the input
direction is ``iifname host-side``, the output direction ``iifname nodes-side``).

A node can also be black-holed (every packet to and from its address dropped, as when a host
stops answering at all); the per-direction counters say how many packets were dropped.

Everything is created with unique names and torn down in ``finally``, even when a test
fails; namespaces left behind by a killed test run are removed by the next one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

PREFIX = "nvfault"  # every namespace this module makes is named nvfault-<pid>-<tag>-<role>
_DROP_ALL = 2**32  # meta random is a 32-bit value


def missing_requirements() -> str | None:
    """Why lossy networks cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root)"
    for program in ("ip", "nft"):
        if shutil.which(program) is None:
            package = {"ip": "iproute2", "nft": "nftables"}[program]
            return f"{program} is missing: install the Debian package {package}"
    return None


def require_netns() -> None:
    """Skip the calling test with a clear reason when lossy networks cannot be built."""
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)


def run(*args: str, input: str | None = None) -> str:
    """Run a command; raise with its stderr when it fails."""
    done = subprocess.run(args, input=input, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _quiet(*args: str) -> None:
    subprocess.run(args, capture_output=True, check=False)


def threshold(loss: float) -> int:
    """The ``meta random`` bound that drops a fraction ``loss`` of packets."""
    if not 0.0 <= loss <= 1.0:
        raise ValueError(f"loss must be between 0 and 1, not {loss}")
    return min(round(loss * _DROP_ALL), _DROP_ALL - 1)


def pick_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A free /24 in 10.200.0.0/13 that no address or route of this host overlaps."""
    used = [ipaddress.ip_network("127.0.0.0/8")]
    text = run("ip", "-o", "-4", "addr", "show") + run("ip", "-4", "route", "show", "table", "all")
    for match in re.finditer(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", text):
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(match.group(1), strict=False))
    rng = rng or random.Random()
    pool = list(ipaddress.ip_network("10.200.0.0/13").subnets(new_prefix=24))
    for candidate in rng.sample(pool, 64):
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("no free /24 in 10.200.0.0/13 for the lossy network")


@dataclass
class LossyNetwork:
    """A built lossy network: where the nodes live and how to reach and hurt them."""

    tag: str
    subnet: ipaddress.IPv4Network
    loss: float
    node_addresses: list[str]
    wire: str = field(init=False)
    nodes: str = field(init=False)
    host_if: str = field(init=False)

    def __post_init__(self) -> None:
        self.wire = f"{PREFIX}-{self.tag}-wire"
        self.nodes = f"{PREFIX}-{self.tag}-nodes"
        self.host_if = f"nvf{self.tag[-6:]}h"  # interface names are at most 15 bytes

    def exec_args(self, *command: str) -> list[str]:
        """A command line that runs ``command`` inside the nodes' namespace."""
        return ["ip", "netns", "exec", self.nodes, *command]

    def blackhole(self, address: str) -> None:
        """Drop every packet to and from ``address`` from now on (the host stops answering)."""
        element = f"{{ {address} }}"
        run(
            "ip",
            "netns",
            "exec",
            self.wire,
            "nft",
            "add",
            "element",
            "inet",
            PREFIX,
            "blackholed",
            element,
        )

    def counters(self) -> dict[str, int]:
        """Packets dropped at random and forwarded, per direction, since the network was built."""
        text = run("ip", "netns", "exec", self.wire, "nft", "-j", "list", "table", "inet", PREFIX)
        listing = json.loads(text)
        out: dict[str, int] = {}
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule is None or "comment" not in rule:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    out[rule["comment"]] = int(expr["counter"]["packets"])
        return out


def _ruleset(net: LossyNetwork, wire_host: str, wire_nodes: str) -> str:
    bound = threshold(net.loss)
    return f"""
table inet {PREFIX} {{
    set blackholed {{ type ipv4_addr; }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ip daddr @blackholed counter drop comment "blackholed-in"
        ip saddr @blackholed counter drop comment "blackholed-out"
        iifname "{wire_host}" meta random < {bound} counter drop comment "dropped-in"
        iifname "{wire_nodes}" meta random < {bound} counter drop comment "dropped-out"
        iifname "{wire_host}" counter comment "passed-in"
        iifname "{wire_nodes}" counter comment "passed-out"
    }}
}}
"""


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process still running in ``namespace`` (servers a test started there)."""
    with contextlib.suppress(RuntimeError):
        for pid in run("ip", "netns", "pids", namespace).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _sweep_stale() -> None:
    """Remove the namespaces (and their servers) of earlier test runs whose process is gone."""
    with contextlib.suppress(RuntimeError):
        for line in run("ip", "netns", "list").splitlines():
            name = line.split()[0] if line.split() else ""
            match = re.fullmatch(rf"{PREFIX}-(\d+)-\w+-(wire|nodes)", name)
            if match and not os.path.exists(f"/proc/{match.group(1)}"):
                _kill_inside(name)
                _quiet("ip", "netns", "del", name)


@contextlib.contextmanager
def lossy_network(*, loss: float = 0.2, nodes: int = 4) -> Iterator[LossyNetwork]:
    """Build the host-wire-nodes namespaces with ``nodes`` node addresses; tear them down after.

    ``loss`` is the fraction of packets dropped in each direction. Calls ``require_netns``
    first, so a test using it is skipped (never failed) where it cannot run. Only what this
    call created is removed, in reverse order, whether the test passed, failed or was
    interrupted.
    """
    require_netns()
    _sweep_stale()
    subnet = pick_subnet()
    hosts = list(subnet.hosts())
    # Link host-wire: .1 (host) and .2 (wire) of a /30; link wire-nodes: the upper /25.
    host_ip, wire_ip = hosts[0], hosts[1]
    upper = list(subnet.subnets(new_prefix=25))[1]
    wire_ip2 = next(upper.hosts())
    node_ips = [str(a) for a in list(upper.hosts())[1 : 1 + nodes]]
    tag = f"{os.getpid()}-{random.randrange(16**6):06x}"
    net = LossyNetwork(tag=tag, subnet=subnet, loss=loss, node_addresses=node_ips)
    short = tag[-6:]
    wire_host, wire_nodes, nodes_if = f"nvf{short}w", f"nvf{short}a", f"nvf{short}n"
    with contextlib.ExitStack() as undo:
        for namespace in (net.wire, net.nodes):
            run("ip", "netns", "add", namespace)
            undo.callback(_quiet, "ip", "netns", "del", namespace)
            undo.callback(_kill_inside, namespace)
        run("ip", "link", "add", net.host_if, "type", "veth", "peer", "name", wire_host)
        # Deleting the host's end removes its peer and the route through it at once (a
        # deleted namespace's devices go asynchronously).
        undo.callback(_quiet, "ip", "link", "del", net.host_if)
        run("ip", "link", "set", wire_host, "netns", net.wire)
        _in(net.wire, "link", "add", wire_nodes, "type", "veth", "peer", "name", nodes_if)
        _in(net.wire, "link", "set", nodes_if, "netns", net.nodes)
        run("ip", "addr", "add", f"{host_ip}/30", "dev", net.host_if)
        run("ip", "link", "set", net.host_if, "up")
        _in(net.wire, "addr", "add", f"{wire_ip}/30", "dev", wire_host)
        _in(net.wire, "addr", "add", f"{wire_ip2}/25", "dev", wire_nodes)
        for address in node_ips:
            _in(net.nodes, "addr", "add", f"{address}/25", "dev", nodes_if)
        for namespace, devices in ((net.wire, (wire_host, wire_nodes)), (net.nodes, (nodes_if,))):
            for device in (*devices, "lo"):
                _in(namespace, "link", "set", device, "up")
        _in(net.nodes, "route", "add", "default", "via", str(wire_ip2))
        run("ip", "route", "add", str(upper), "via", str(wire_ip))
        in_wire = ("ip", "netns", "exec", net.wire)
        run(*in_wire, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run(*in_wire, "nft", "-f", "-", input=_ruleset(net, wire_host, wire_nodes))
        yield net


def _in(namespace: str, *args: str) -> None:
    run("ip", "-n", namespace, *args)
