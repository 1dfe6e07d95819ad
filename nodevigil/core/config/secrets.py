"""Every secret the configuration points at, read and checked one way for check-config and run.

``check-config`` (and the start, which validates the same way) reads each secret here and checks
its form; the code that uses a secret at start reads it with ``load_secret`` too, so the two can
never disagree. A problem names the configuration key and the file or variable, never the value.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from nodevigil.core.config.schema import Config, SecretRef
from nodevigil.core.errors import ConfigError

MAX_SECRET_BYTES = 64 * 1024  # a TSIG key or webhook secret is well under 1 KiB
WEBHOOK_PREFIX = "whsec_"
MIN_AGENT_SECRET = 32  # characters: `openssl rand -hex 32` makes 64

# How a secret is used decides what form it must have:
# text: any non-empty text (passwords, API keys); webhook: ``whsec_<base64>`` (Standard
# Webhooks); tsig: the base64 secret alone, as BIND's ``secret "...";`` holds it; agent: the
# installation secret agent keys derive from (long enough to resist guessing).
SecretKind = Literal["text", "webhook", "tsig", "agent"]

_KEY_BLOCK = re.compile(r'^key\s|[{};"]')  # never in base64


def read_secret(ref: SecretRef, base_dir: Path | None = None) -> str:
    """Read a secret from its file or environment variable; never log the value."""
    if ref.secret_env is not None:
        value = os.environ.get(ref.secret_env)
        if value is None:
            raise ConfigError([f"environment variable {ref.secret_env} is not set"])
        return value.strip()
    assert ref.secret_file is not None
    path = ref.secret_file if base_dir is None else base_dir / ref.secret_file
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read secret file {path}: {exc.strerror or exc}"]) from None
    # The reasons below never quote the content: it is the secret, or part of it.
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError([f"secret file {path} is larger than 64 KiB: is it the right file?"])
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError([f"secret file {path} is not UTF-8 text"]) from None


def webhook_key(text: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError (without the value) otherwise."""
    text = text.strip()
    if not text.startswith(WEBHOOK_PREFIX):
        raise ValueError(f"the webhook secret must start with {WEBHOOK_PREFIX}")
    try:
        key = base64.b64decode(text[len(WEBHOOK_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the webhook secret after {WEBHOOK_PREFIX} is not valid base64") from None
    if not key:
        raise ValueError(f"the webhook secret is empty after {WEBHOOK_PREFIX}")
    return key


def secret_problem(kind: SecretKind, value: str) -> str:
    """Why ``value`` cannot serve as a secret of ``kind`` (never quoting it), or ""."""
    if not value:
        return "the secret is empty"
    if kind == "webhook":
        try:
            webhook_key(value)
        except ValueError as exc:
            return str(exc)
    elif kind == "tsig":
        if _KEY_BLOCK.search(value):
            # tsig-keygen's output is a whole ``key "name" { algorithm ...; secret "..."; };``;
            # dnspython would take its letters as a (wrong) key and BIND answer BADSIG.
            return (
                "holds a BIND key { ... } block, not the secret alone: put only the value of "
                'its secret "..." (base64) in the file; name and algorithm go in tsig'
            )
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return 'the TSIG secret is not valid base64 (the value of BIND\'s secret "...")'
    elif kind == "agent" and len(value) < MIN_AGENT_SECRET:
        return (
            f"the secret is shorter than {MIN_AGENT_SECRET} characters; "
            "make one with `openssl rand -hex 32`"
        )
    return ""


def load_secret(where: str, ref: SecretRef, base_dir: Path | None, kind: SecretKind) -> str:
    """Read the secret at config key ``where`` and check its form; a ConfigError names ``where``."""
    if (ref.secret_file is None) == (ref.secret_env is None):
        raise ConfigError([f"{where}: give exactly one of secret_file or secret_env"])
    try:
        value = read_secret(ref, base_dir)
    except ConfigError as exc:
        raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    problem = secret_problem(kind, value)
    if problem:
        source = ref.secret_file if ref.secret_env is None else f"${ref.secret_env}"
        if base_dir is not None and ref.secret_file is not None:
            source = base_dir / ref.secret_file
        raise ConfigError([f"{where}: {source}: {problem}"])
    return value


def config_secrets(config: Config) -> Iterator[tuple[str, SecretRef, SecretKind]]:
    """Every secret the daemon reads at start: (config key, reference, kind)."""
    for name, lb in config.load_balancers.items():
        if lb.type == "rfc2136" and lb.tsig is not None:
            yield f"load_balancers.{name}.tsig", lb.tsig, "tsig"
        elif lb.type == "powerdns":
            yield f"load_balancers.{name}.api_key", lb.api_key, "text"
    mqtt = config.mqtt
    if mqtt is not None and mqtt.password is not None:
        yield "mqtt.password", mqtt.password, "text"
    if mqtt is not None and mqtt.agent_secret is not None:
        yield "mqtt.agent_secret", mqtt.agent_secret, "agent"
    for name, notifier in config.notifiers.items():
        if notifier.type == "webhook":
            yield f"notifiers.{name}", notifier, "webhook"
        elif notifier.type == "email" and notifier.smtp.password is not None:
            yield f"notifiers.{name}.smtp.password", notifier.smtp.password, "text"
    db = config.database
    if db is not None and (db.password_file is not None or db.password_env is not None):
        key = "database.password_file" if db.password_file else "database.password_env"
        yield key, SecretRef(secret_file=db.password_file, secret_env=db.password_env), "text"
    # cluster.etcd.password_file is read by the schema itself (Etcd._password_readable).


def secret_problems(config: Config, base_dir: Path | None) -> Iterator[str]:
    """Read and check every secret as the start does; one line per problem."""
    for where, ref, kind in config_secrets(config):
        if (ref.secret_file is None) == (ref.secret_env is None):
            continue  # the configuration's own check already said so
        try:
            load_secret(where, ref, base_dir, kind)
        except ConfigError as exc:
            yield from exc.problems
