"""Alerts posted to Prometheus Alertmanager's v2 API; a recovery resolves its alert."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from failover.notify.base import RESOLVES, Delivery, Message
from failover.notify.webhook import USER_AGENT, SessionHolder, post_json
from nodevigil.core.config.schema import AlertmanagerNotifier

RAISES = frozenset(RESOLVES.values())


def alert_name(kind: str) -> str:
    """``node.down`` -> ``NodevigilNodeDown``; a recovery kind takes its partner's name."""
    raising = RESOLVES.get(kind, kind)
    words = [w for w in re.split(r"[._\-]+", raising) if w]
    return "Nodevigil" + "".join(w[:1].upper() + w[1:] for w in words)


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def build_alert(
    message: Message,
    labels: dict[str, str],
    resolve_after: float,
    firing_for: float = 7 * 86400.0,
) -> dict[str, Any]:
    """One postable alert; its labels are the same for a problem and its recovery."""
    alert: dict[str, Any] = {
        "labels": {
            **labels,
            "alertname": alert_name(message.kind),
            "subject": message.subject,
            "source": "nodevigil",
        },
        "annotations": {
            "summary": message.summary or f"{message.kind} {message.subject}",
            "description": message.text,
            "message_id": message.id,
            "kind": message.kind,
        },
    }
    if message.kind in RESOLVES:
        # No startsAt: Alertmanager keeps the firing alert's, and ends it now.
        alert["endsAt"] = message.timestamp
    elif message.kind in RAISES:
        # Alertmanager ends an alert without endsAt after its resolve_timeout (5m by default);
        # this one lasts until its recovery (which the outbox delivers) or firing_for at most.
        alert["startsAt"] = message.timestamp
        alert["endsAt"] = _rfc3339(message.created_at + firing_for)
    else:  # a one-shot event: shown for a while, then resolved by itself
        alert["startsAt"] = message.timestamp
        alert["endsAt"] = _rfc3339(message.created_at + resolve_after)
    return alert


class AlertmanagerTransport:
    """Posts each message as one alert to ``{url}/api/v2/alerts``.

    A session passed in stays the caller's to close; otherwise one is made on first use.
    """

    def __init__(
        self,
        name: str,
        config: AlertmanagerNotifier,
        session: aiohttp.ClientSession | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._config = config
        self._url = config.url.rstrip("/") + "/api/v2/alerts"
        self._sessions = SessionHolder(session)
        self._wall = wall

    def alert(self, message: Message) -> dict[str, Any]:
        """The alert ``message`` becomes."""
        config = self._config
        return build_alert(message, dict(config.labels), config.resolve_after, config.firing_for)

    async def send(self, message: Message) -> Delivery:
        """POST the alert once; 2xx delivered, anything else (or no answer) retry."""
        body = json.dumps([self.alert(message)], sort_keys=True, separators=(",", ":")).encode()
        return await post_json(
            self._sessions.get(),
            self._url,
            body,
            {"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            time_limit=self._config.timeout,
            wall=self._wall,
            what=f"alertmanager {self.name}",
            disable_on_gone=False,
        )

    async def close(self) -> None:
        """Close the session this transport made (never one passed in)."""
        await self._sessions.close()
