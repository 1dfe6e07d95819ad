"""The transport registry: a notifier's ``type:`` picks the class; secrets are read here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from failover.notify.base import Transport
from nodevigil.core.config.schema import (
    AlertmanagerNotifier,
    EmailNotifier,
    Mqtt,
    MqttNotifier,
    Notifier,
    SecretRef,
    WebhookNotifier,
)
from nodevigil.core.config.secrets import SecretKind, load_secret
from nodevigil.core.errors import ConfigError

log = logging.getLogger(__name__)


def _secret(where: str, ref: SecretRef, base_dir: Path, kind: SecretKind = "text") -> str:
    """Read one secret as check-config does; problems name the config path, never the value."""
    return load_secret(where, ref, base_dir, kind)


def _webhook(name: str, config: Notifier, base_dir: Path, mqtt: Mqtt | None) -> Transport:
    from failover.notify.webhook import WebhookTransport

    assert isinstance(config, WebhookNotifier)
    return WebhookTransport(name, config, _secret(f"notifiers.{name}", config, base_dir, "webhook"))


def _alertmanager(name: str, config: Notifier, base_dir: Path, mqtt: Mqtt | None) -> Transport:
    from failover.notify.alertmanager import AlertmanagerTransport

    assert isinstance(config, AlertmanagerNotifier)
    return AlertmanagerTransport(name, config)


def _email(name: str, config: Notifier, base_dir: Path, mqtt: Mqtt | None) -> Transport:
    from failover.notify.email import EmailTransport

    assert isinstance(config, EmailNotifier)
    smtp = config.smtp
    where = f"notifiers.{name}.smtp"
    password = None
    if smtp.password is not None:
        if smtp.username is None:
            raise ConfigError([f"{where}.username: a password needs a username"])
        password = _secret(f"{where}.password", smtp.password, base_dir)
    try:
        return EmailTransport(name, config, password, base_dir=base_dir)
    except ValueError as exc:
        raise ConfigError([f"{where}: {exc}"]) from None


def _mqtt(name: str, config: Notifier, base_dir: Path, mqtt: Mqtt | None) -> Transport:
    from failover.notify.mqtt import MqttTransport

    assert isinstance(config, MqttNotifier)
    if config.url is None and mqtt is None:
        raise ConfigError(
            [f"notifiers.{name}.url: give the broker's url or configure the top-level mqtt section"]
        )
    password = None
    if config.url is None and mqtt is not None and mqtt.password is not None:
        password = _secret(f"notifiers.{name}: mqtt.password", mqtt.password, base_dir)
    return MqttTransport(name, config, mqtt, password)


Factory = Callable[[str, Notifier, Path, Mqtt | None], Transport]
REGISTRY: dict[str, Factory] = {
    "webhook": _webhook,
    "alertmanager": _alertmanager,
    "email": _email,
    "mqtt": _mqtt,
}


def build_transport(name: str, config: Notifier, base_dir: Path, mqtt: Mqtt | None) -> Transport:
    """The transport for notifier ``name``; ConfigError (with ``notifiers.<name>``) if unusable.

    ``base_dir`` is the configuration file's folder (relative secret and CA files);
    ``mqtt`` is the top-level broker, for mqtt notifiers without their own ``url``.
    """
    factory = REGISTRY.get(config.type)
    if factory is None:
        raise ConfigError([f"notifiers.{name}.type: {config.type!r} is not a notifier type"])
    return factory(name, config, base_dir, mqtt)


async def close_all(transports: Iterable[Transport]) -> None:
    """Close every transport; one that fails to close is logged and does not stop the others."""
    items = list(transports)
    results = await asyncio.gather(*(t.close() for t in items), return_exceptions=True)
    for transport, result in zip(items, results, strict=True):
        if isinstance(result, Exception):
            log.warning("notifier %s: closing failed: %s", transport.name, result)
        elif isinstance(result, BaseException):
            raise result
