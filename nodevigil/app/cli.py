"""The ``nodevigil`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from failover.proof.ttl import ttl_warnings
from nodevigil import __version__
from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.app.logs import LOG_FORMATS
from nodevigil.app.logs import configure as configure_logging
from nodevigil.core.config import Config, load_config
from nodevigil.core.durations import parse_duration
from nodevigil.core.errors import ConfigError, NodevigilError
from nodevigil.core.signals import EarlySignals

DEFAULT_CONFIG = "/etc/nodevigil/nodevigil.yaml"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(
        prog="nodevigil",
        description="Cloud node health monitor, failover controller and SLA credit ledger.",
    )
    parser.add_argument("--version", action="version", version=f"nodevigil {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    log_format = "text, or json: one object per line (time, level, logger, message, exception)"
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS, help=log_format)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path)
    run.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=LOG_FORMATS, help=log_format
    )
    run.add_argument(
        "--observe",
        action="store_true",
        help="observe mode whatever failover.mode says: decide and log, write nothing to "
        "any load balancer, notify no customer (until restarted without it)",
    )
    run.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default=None,
        help="event loop: auto (uvloop when installed, the default), asyncio or uvloop; "
        "overrides $NODEVIGIL_LOOP",
    )

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path)

    agent = sub.add_parser("agent", help="run the node agent (MQTT heartbeat) on a cloud node")
    agent.add_argument("--mqtt", required=True, help="broker URL, e.g. mqtt://10.0.0.2:1883")
    agent.add_argument("--node", required=True, help="this node's name in the configuration")
    agent.add_argument("--interval", default="2s", type=_duration, help="heartbeat period")
    agent.add_argument("--topic-prefix", default="nodevigil")
    agent.add_argument("--disk", default="/", help="the filesystem whose usage is reported")
    agent.add_argument(
        "--key-file", type=Path, help="this node's agent key (from `nodevigil agent-key`)"
    )
    agent.add_argument("--username", help="broker login (default with a password: the node)")
    agent.add_argument(
        "--password-file", type=Path, help="broker password (default: $NODEVIGIL_MQTT_PASSWORD)"
    )
    agent.add_argument("--tls-ca", type=Path, help="CA file for mqtts:// (default: system CAs)")
    agent.add_argument("--tls-cert", type=Path, help="client certificate for mqtts://")
    agent.add_argument("--tls-key", type=Path, help="the client certificate's private key")

    agent_key = sub.add_parser(
        "agent-key", help="print (or write) a node's agent key, derived from mqtt.agent_secret"
    )
    agent_key.add_argument("node", help="the agent's name (an mqtt probe's agent or node)")
    agent_key.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path)
    agent_key.add_argument(
        "--out", type=Path, help="write the key to this file (mode 0600) instead of stdout"
    )

    from nodevigil.app import sla_cli

    sla = sub.add_parser(
        "sla",
        help="SLA credits: offline from CSV files, or from the ledger (--db STATE_DIR/ledger.db)",
    )
    sla_cli.add_arguments(sla)
    from nodevigil.app import state_cli

    state_cli.add_arguments(sub)

    remote = []
    for verb, doc in (("drain", "hold a node or site out"), ("undrain", "clear a drain")):
        cmd = sub.add_parser(verb, help=f"{doc} through the running daemon's API")
        cmd.add_argument("name", help="the node (or, with --site, the site)")
        cmd.add_argument("--site", action="store_true", help="NAME is a site, not a node")
        if verb == "drain":
            cmd.add_argument("--for", dest="duration", help="time box, e.g. 30m")
            cmd.add_argument("--reason", default="", help="recorded with the override")
        remote.append(cmd)
    cause = sub.add_parser("cause", help="tag a ledger interval's cause (credits are recomputed)")
    cause.add_argument("interval", type=int, help="the interval id from /api/v1/sla/ledger")
    cause.add_argument("cause", help="provider, force_majeure, telecom_failure, third_party, ...")
    cause.add_argument("--note", default="", help="why; recorded with the change")
    remote.append(cause)
    exclude = sub.add_parser("exclude", help="declare an exclusion window after the fact")
    exclude.add_argument("--start", required=True, help="RFC 3339 time with offset")
    exclude.add_argument("--end", required=True, help="RFC 3339 time with offset")
    exclude.add_argument("--cause", required=True, help="e.g. scheduled_maintenance")
    exclude.add_argument("--service", action="append", default=[], help="repeat; none = all")
    exclude.add_argument("--note", default="")
    remote.append(exclude)
    incident = sub.add_parser("incident", help="list, show, update or tag incidents")
    actions = incident.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="incidents, newest first")
    listing.add_argument("--open", action="store_true", help="only those not resolved")
    remote.append(listing)
    show = actions.add_parser("show", help="one incident with its timeline")
    show.add_argument("id", type=int)
    remote.append(show)
    update = actions.add_parser("update", help="post an update (customers are told)")
    update.add_argument("id", type=int)
    update.add_argument("--message", "-m", required=True)
    update.add_argument(
        "--state", choices=["investigating", "identified", "monitoring", "resolved"]
    )
    update.add_argument("--quiet", action="store_true", help="record it without notifying")
    remote.append(update)
    tag = actions.add_parser("cause", help="tag the cause; the SLA ledger follows")
    tag.add_argument("id", type=int)
    tag.add_argument("cause", help="provider, force_majeure, telecom_failure, third_party, ...")
    tag.add_argument("--note", default="")
    remote.append(tag)
    maintenance = sub.add_parser("maintenance", help="announce, list or cancel maintenance")
    actions = maintenance.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="announce a window (its time is excluded from the SLA)")
    add.add_argument("--start", required=True, help="RFC 3339 time with offset")
    add.add_argument("--end", required=True, help="RFC 3339 time with offset")
    add.add_argument("--service", action="append", required=True, help="repeat for several")
    add.add_argument("--note", default="")
    remote.append(add)
    remote.append(actions.add_parser("list", help="windows not cancelled"))
    cancel = actions.add_parser("cancel", help="cancel a window that has not begun")
    cancel.add_argument("id", type=int)
    remote.append(cancel)
    leader = sub.add_parser("leader", help="the cluster's leader: show it, or hand over")
    actions = leader.add_subparsers(dest="action", required=True, metavar="ACTION")
    remote.append(actions.add_parser("show", help="this host's role, the leader, the members"))
    remote.append(
        actions.add_parser(
            "step-down",
            help="the leader (the daemon at --url / -c) stops acting and revokes its lease; "
            "another host takes over within about a second",
        )
    )
    from nodevigil.app import status_cli

    status_cli.add_arguments(sub, DEFAULT_CONFIG)
    from nodevigil.app.replay import cli as replay_cli

    replay_cli.add_arguments(sub, DEFAULT_CONFIG)
    from nodevigil.app.demo import options as demo_options

    demo = sub.add_parser(
        "demo", help="build a small world on loopback and play a failover story through it"
    )
    demo_options.add_arguments(demo)
    for cmd in remote:
        cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path)
        cmd.add_argument("--url", help="the API's base URL (default: from api.listen)")
        cmd.add_argument(
            "--token-file",
            type=Path,
            help="a file holding an admin token (default: $NODEVIGIL_TOKEN)",
        )
    return parser


def _check_config(path: Path) -> int:
    # As ``run`` validates at start: every secret read and checked (never printed).
    config = load_config(path, event_kinds=EVENT_KINDS, secrets=True)
    print(
        f"{path}: ok ({len(config.nodes)} nodes, {len(config.sites)} sites, "
        f"{len(config.services)} services, {len(config.load_balancers)} load balancers)"
    )
    for line in drain_budgets(config):
        print(line)
    for line in ttl_warnings(config):
        print(f"warning: {line}")
    return 0


def drain_budgets(config: Config) -> list[str]:
    """Per site, how many nodes failover may drain at once and which limit sets that."""
    sizes = {site.name: 0 for site in config.sites}
    for node in config.nodes:
        sizes[node.site] = sizes.get(node.site, 0) + 1
    lines = []
    for site in config.sites:
        size = sizes[site.name]
        budget, limit = site.drain_budget(size)
        cap = site.max_unavailable
        if isinstance(cap, str):
            cap = f"{cap} of {size} rounded up = {site.max_unavailable_count(size)}"
        lines.append(
            f"site {site.name}: {size} nodes, up to {budget} may be drained at once "
            f"(min_healthy {site.min_healthy}, max_unavailable {cap}; set by {limit})"
        )
    return lines


def main(argv: list[str] | None = None, *, early: EarlySignals | None = None) -> int:
    """Run one command; ``early`` holds the signals caught since the process began."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        if early is not None:
            early.release()
        raise
    if early is not None and args.command != "run":
        early.release()  # only the daemon defers signals; every other command gets them back
        early = None
    configure_logging(args.log_level, args.log_format)
    try:
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "run":
            from nodevigil.app.daemon import serve
            from nodevigil.core.eventloop import choose_loop, loop_factory

            loop = choose_loop(args.loop)
            logging.getLogger("nodevigil").info("event loop: %s", loop)
            with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
                return runner.run(serve(args.config, early=early, observe=args.observe))
        if args.command == "sla":
            from nodevigil.app import sla_cli

            return sla_cli.run(args)
        if args.command in ("db", "state"):
            from nodevigil.app import state_cli

            return state_cli.run(args)
        if args.command in (
            "drain",
            "undrain",
            "cause",
            "exclude",
            "incident",
            "maintenance",
            "leader",
        ):
            from nodevigil.app.remote import call_api

            return asyncio.run(call_api(args))
        if args.command in ("status", "nodes", "events"):
            from nodevigil.app import status_cli

            return asyncio.run(status_cli.run(args))
        if args.command == "replay":
            from nodevigil.app.replay import cli as replay_cli

            return replay_cli.run(args)
        if args.command == "demo":
            from nodevigil.app.demo import options as demo_options
            from nodevigil.app.demo.run import main as demo_main

            return demo_main(demo_options.from_args(args), args.log_level)
        if args.command == "agent":
            from nodevigil.app.agentcli import run_agent

            return run_agent(args)
        if args.command == "agent-key":
            from nodevigil.app.agentcli import agent_key

            return agent_key(args.config, args.node, args.out)
    except ConfigError as exc:
        where = f"{exc.source}: " if exc.source else ""
        for problem in exc.problems or ["invalid configuration"]:
            print(f"{where}{problem}", file=sys.stderr)
        return 1
    except NodevigilError as exc:
        print(f"nodevigil: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main(early=EarlySignals()))
