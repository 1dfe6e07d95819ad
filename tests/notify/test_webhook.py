"""The webhook transport against a receiver that verifies Standard Webhooks signatures itself."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from failover.notify.transports import build_transport
from failover.notify.webhook import WebhookTransport, parse_secret, retry_after_seconds
from nodevigil import __version__
from nodevigil.core.config.schema import WebhookNotifier
from nodevigil.core.errors import ConfigError
from tests.failover.daemons import free_port
from tests.notify.receivers import Closer, WebhookReceiver, make_message, new_secret


def notifier(url: str, **extra: Any) -> WebhookNotifier:
    return WebhookNotifier.model_validate(
        {"type": "webhook", "url": url, "secret_env": "UNUSED", **extra}
    )


def transport(rx: WebhookReceiver, closing: Closer, **extra: Any) -> WebhookTransport:
    return closing(WebhookTransport("hook", notifier(rx.url, **extra), rx.secret))


async def test_signed_delivery_is_accepted(
    webhook_receiver: WebhookReceiver, closing: Closer
) -> None:
    rx = webhook_receiver
    t = transport(rx, closing, headers={"X-Tenant": "acme"})
    message = make_message("node.down", "sh-1", data={"node": "sh-1", "reason": "timeout"})

    delivery = await t.send(message)

    assert delivery.outcome == "delivered", delivery
    assert rx.rejected == []
    [got] = rx.accepted
    assert got.id == message.id
    assert got.type == "node.down"
    assert got.payload == json.loads(json.dumps(message.envelope()))
    assert abs(got.timestamp - time.time()) < 5
    assert got.headers["user-agent"] == f"nodevigil/{__version__}"
    assert got.headers["x-tenant"] == "acme"
    assert got.headers["content-type"] == "application/json"


async def test_retries_carry_the_same_id_and_body(
    webhook_receiver: WebhookReceiver, closing: Closer
) -> None:
    rx = webhook_receiver
    t = transport(rx, closing)
    message = make_message("service.unavailable", "web", data={"sites": ["sh", "bj"], "b": 1})
    rx.fail_next(2, status=503)

    outcomes = [(await t.send(message)).outcome for _ in range(3)]

    assert outcomes == ["retry", "retry", "delivered"]
    attempts = rx.attempts_for(message.id)
    assert len(attempts) == 3
    assert len({a.body for a in attempts}) == 1
    assert rx.deliveries(message.id) == 1


async def test_configured_headers_cannot_replace_the_signature(
    webhook_receiver: WebhookReceiver, closing: Closer
) -> None:
    rx = webhook_receiver
    t = transport(rx, closing, headers={"webhook-signature": "v1,forged", "webhook-id": "x"})
    message = make_message()
    assert (await t.send(message)).outcome == "delivered"
    assert rx.accepted[0].id == message.id


@pytest.mark.parametrize("status", [503, 429, 500, 404, 401])
async def test_failures_are_retried_with_retry_after(
    webhook_receiver: WebhookReceiver, closing: Closer, status: int
) -> None:
    rx = webhook_receiver
    t = transport(rx, closing)
    rx.fail_next(1, status=status, retry_after=7)

    delivery = await t.send(make_message())

    assert delivery.outcome == "retry"
    assert delivery.retry_after == 7.0
    assert str(status) in delivery.detail


async def test_retry_after_as_http_date(webhook_receiver: WebhookReceiver, closing: Closer) -> None:
    rx = webhook_receiver
    t = transport(rx, closing)
    when = format_datetime(datetime.fromtimestamp(time.time() + 30, UTC), usegmt=True)
    rx.fail_next(1, status=503, retry_after=when)

    delivery = await t.send(make_message())

    assert delivery.outcome == "retry"
    assert delivery.retry_after is not None
    assert 25 <= delivery.retry_after <= 31


def test_retry_after_parsing() -> None:
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 1.5 ", now) == 1.5
    assert retry_after_seconds("-3", now) == 0.0
    assert retry_after_seconds("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60.0
    assert retry_after_seconds("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0  # past: now
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("nan", now) is None
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds(None, now) is None


async def test_gone_disables(webhook_receiver: WebhookReceiver, closing: Closer) -> None:
    rx = webhook_receiver
    t = transport(rx, closing)
    rx.gone()

    delivery = await t.send(make_message())

    assert delivery.outcome == "disabled"
    assert "410" in delivery.detail


async def test_redirect_is_not_followed(webhook_receiver: WebhookReceiver, closing: Closer) -> None:
    rx = webhook_receiver
    t = transport(rx, closing)
    rx.fail_next(1, status=307)
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "redirects are not followed" in delivery.detail


async def test_timeout_is_retried(webhook_receiver: WebhookReceiver, closing: Closer) -> None:
    rx = webhook_receiver
    t = transport(rx, closing, timeout="200ms")
    rx.hold()

    started = time.monotonic()
    delivery = await t.send(make_message())

    assert delivery.outcome == "retry"
    assert "no answer within 0.2s" in delivery.detail
    assert time.monotonic() - started < 5
    rx.release()


async def test_refused_connection_is_retried(closing: Closer) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    t = closing(WebhookTransport("hook", notifier(url), new_secret()))
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "hook" in delivery.detail


async def test_receiver_refuses_a_wrong_secret(
    webhook_receiver: WebhookReceiver, closing: Closer
) -> None:
    rx = webhook_receiver
    other = new_secret()
    t = closing(WebhookTransport("hook", notifier(rx.url), other))

    delivery = await t.send(make_message())

    assert delivery.outcome == "retry"
    assert "401" in delivery.detail
    assert rx.accepted == []
    assert rx.rejected == ["no v1 signature matches"]
    assert other not in delivery.detail and other[6:] not in delivery.detail


async def test_receiver_refuses_a_stale_timestamp(
    webhook_receiver: WebhookReceiver, closing: Closer
) -> None:
    rx = webhook_receiver
    t = closing(
        WebhookTransport("hook", notifier(rx.url), rx.secret, wall=lambda: time.time() - 600)
    )
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "more than 300s from now" in rx.rejected[0]


async def test_a_session_passed_in_is_left_open(webhook_receiver: WebhookReceiver) -> None:
    async with aiohttp.ClientSession() as session:
        t = WebhookTransport(
            "hook", notifier(webhook_receiver.url), webhook_receiver.secret, session
        )
        assert (await t.send(make_message())).outcome == "delivered"
        await t.close()
        assert not session.closed


@pytest.mark.parametrize(
    "secret",
    ["c2VjcmV0LWtleS1zZWNyZXQ=", "whsec_not*base64!!", "whsec_c2VjcmV0LWtleQ", "whsec_", "  "],
)
def test_malformed_secret_is_refused_without_leaking_it(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_secret(secret, "notifiers.hook")
    text = str(caught.value)
    assert text.startswith("notifiers.hook: ")
    body = secret.strip().removeprefix("whsec_")
    assert not body or body not in text


def test_a_valid_secret_decodes() -> None:
    assert parse_secret("whsec_c2VjcmV0LWtleQ==") == b"secret-key"


# --- built from the configuration ------------------------------------------------------------


async def test_built_from_a_secret_file(
    webhook_receiver: WebhookReceiver, tmp_path: Path, closing: Closer
) -> None:
    (tmp_path / "hook.secret").write_text(webhook_receiver.secret + "\n")
    config = WebhookNotifier.model_validate(
        {"type": "webhook", "url": webhook_receiver.url, "secret_file": "hook.secret"}
    )
    t = closing(build_transport("hook", config, tmp_path, None))
    assert (await t.send(make_message())).outcome == "delivered"


async def test_built_from_an_environment_variable(
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
    closing: Closer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_SECRET", webhook_receiver.secret)
    config = notifier(webhook_receiver.url, secret_env="HOOK_SECRET")
    t = closing(build_transport("hook", config, tmp_path, None))
    assert (await t.send(make_message())).outcome == "delivered"


def test_missing_secret_names_the_notifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    config = notifier("http://127.0.0.1:1/", secret_env="NO_SUCH_SECRET")
    with pytest.raises(ConfigError, match=r"notifiers\.hook: environment variable NO_SUCH_SECRET"):
        build_transport("hook", config, tmp_path, None)
    config = WebhookNotifier.model_validate(
        {"type": "webhook", "url": "http://127.0.0.1:1/", "secret_file": "absent"}
    )
    with pytest.raises(ConfigError, match=r"notifiers\.hook: cannot read secret file"):
        build_transport("hook", config, tmp_path, None)


def test_malformed_secret_file_names_the_notifier_not_the_value(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("hunter2-plain-password\n")
    config = WebhookNotifier.model_validate(
        {"type": "webhook", "url": "http://127.0.0.1:1/", "secret_file": "hook.secret"}
    )
    with pytest.raises(ConfigError) as caught:
        build_transport("hook", config, tmp_path, None)
    assert "notifiers.hook" in str(caught.value)
    assert "hunter2" not in str(caught.value)
