"""The node agent's commands: ``nodevigil agent`` and ``nodevigil agent-key``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from monitor.agentauth import derive_key, format_key, parse_key, secret_problem
from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.core.config import MqttProbe, load_config, read_secret
from nodevigil.core.config.load import MAX_SECRET_BYTES
from nodevigil.core.errors import ConfigError, NodevigilError

PASSWORD_ENV = "NODEVIGIL_MQTT_PASSWORD"


def _read_small(path: Path, what: str) -> str:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise NodevigilError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise NodevigilError(f"{what} {path} is larger than 64 KiB: is it the right file?")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise NodevigilError(f"{what} {path} is not UTF-8 text") from None


def run_agent(args: argparse.Namespace) -> int:
    """Run the node agent until interrupted."""
    from monitor.agent import NodeAgent

    key = None
    if args.key_file is not None:
        try:
            key = parse_key(_read_small(args.key_file, "key file"))
        except ValueError as exc:
            raise NodevigilError(f"{args.key_file}: {exc}") from None
    password = os.environ.get(PASSWORD_ENV)
    if args.password_file is not None:
        password = _read_small(args.password_file, "password file")
    username = args.username or (args.node if password is not None else None)
    try:
        agent = NodeAgent(
            url=args.mqtt,
            node=args.node,
            interval=args.interval,
            topic_prefix=args.topic_prefix,
            username=username,
            password=password,
            key=key,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            disk_path=args.disk,
        )
    except ValueError as exc:
        raise NodevigilError(str(exc)) from None
    asyncio.run(agent.run())
    return 0


def agent_key(config_path: Path, node: str, out: Path | None) -> int:
    """Print or write the agent key of ``node``, derived from the configured agent secret."""
    config = load_config(config_path, event_kinds=EVENT_KINDS)
    mqtt = config.mqtt
    if mqtt is None or mqtt.agent_secret is None:
        raise ConfigError(["mqtt.agent_secret: not set; agent keys derive from it"])
    agents = {
        spec.agent or n.name
        for n in config.nodes
        for spec in n.probes
        if isinstance(spec, MqttProbe)
    }
    if node not in agents:
        raise NodevigilError(f"no mqtt probe in {config_path} names the agent {node!r}")
    secret = read_secret(mqtt.agent_secret, config_path.resolve().parent)
    problem = secret_problem(secret)
    if problem:
        raise ConfigError([problem])
    text = format_key(derive_key(secret, node)) + "\n"
    if out is None:
        sys.stdout.write(text)
        return 0
    # Created 0600 and written through that descriptor: the key is never readable by others.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
    print(f"wrote the agent key of {node} to {out}", file=sys.stderr)
    return 0
