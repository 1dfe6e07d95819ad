"""The email transport against a real SMTP server (aiosmtpd): plain, STARTTLS + AUTH, TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from failover.notify.email import EmailTransport, build_mail, message_id
from failover.notify.transports import build_transport
from nodevigil.core.config.schema import EmailNotifier
from nodevigil.core.errors import ConfigError
from tests.failover.daemons import free_port
from tests.notify.receivers import Closer, SmtpSink, make_message

PASSWORD = "wonderland"


def notifier(host: str, port: int, **smtp: Any) -> EmailNotifier:
    return EmailNotifier.model_validate(
        {
            "type": "email",
            "to": ["ops@example.test", "noc@example.test"],
            "sender": "nodevigil@example.test",
            "smtp": {"host": host, "port": port, "timeout": "5s", **smtp},
        }
    )


def sink_notifier(sink: SmtpSink, **smtp: Any) -> EmailNotifier:
    return notifier(sink.host, sink.port, **smtp)


async def test_plain_mail_arrives(smtp_sink: SmtpSink, closing: Closer) -> None:
    t = closing(EmailTransport("mail", sink_notifier(smtp_sink), None))
    message = make_message(
        "incident.opened",
        "web",
        summary="web is unavailable",
        text="Service web has been unavailable since 10:02 UTC.\n",
    )

    delivery = await t.send(message)

    assert delivery.outcome == "delivered", delivery
    [mail] = smtp_sink.messages
    assert mail.mail_from == "nodevigil@example.test"
    assert mail.rcpt_tos == ["ops@example.test", "noc@example.test"]
    assert mail.message["Subject"] == "[nodevigil] web is unavailable"
    assert mail.message["Message-ID"] == f"<{message.id}@nodevigil>"
    assert mail.message["From"] == "nodevigil@example.test"
    assert mail.message["Date"].datetime.timestamp() == int(message.created_at)
    body = mail.message.get_content().replace("\r\n", "\n")  # as it came over the wire
    assert body == "Service web has been unavailable since 10:02 UTC.\n"
    assert not mail.tls


async def test_starttls_with_login(smtp_starttls: SmtpSink, closing: Closer) -> None:
    sink = smtp_starttls
    config = sink_notifier(sink, starttls=True, username="alice", ca_file=str(sink.ca_file))
    t = closing(EmailTransport("mail", config, PASSWORD))
    message = make_message("node.down", "sh-1")

    delivery = await t.send(message)

    assert delivery.outcome == "delivered", delivery
    [mail] = sink.messages
    assert mail.tls
    assert mail.login == "alice"
    assert mail.message["Message-ID"] == f"<{message.id}@nodevigil>"


async def test_implicit_tls(closing: Closer) -> None:
    async with SmtpSink("tls") as sink:
        config = sink_notifier(sink, tls=True, ca_file=str(sink.ca_file))
        t = closing(EmailTransport("mail", config, None))
        assert (await t.send(make_message())).outcome == "delivered"
        assert sink.messages[0].tls


async def test_relative_ca_file_is_read_from_the_config_folder(
    smtp_starttls: SmtpSink, tmp_path: Path, closing: Closer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = smtp_starttls
    (tmp_path / "ca.pem").write_bytes(sink.ca_file.read_bytes())
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    config = sink_notifier(
        sink,
        starttls=True,
        username="alice",
        password={"secret_env": "SMTP_PASSWORD"},
        ca_file="ca.pem",
    )
    t = closing(build_transport("mail", config, tmp_path, None))
    assert (await t.send(make_message())).outcome == "delivered"


async def test_unverifiable_certificate_is_retried(
    smtp_starttls: SmtpSink, closing: Closer
) -> None:
    config = sink_notifier(smtp_starttls, starttls=True, username="alice")  # no ca_file
    t = closing(EmailTransport("mail", config, PASSWORD))
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "certificate" in delivery.detail.lower()
    assert smtp_starttls.messages == []


async def test_verify_off_accepts_any_certificate(smtp_starttls: SmtpSink, closing: Closer) -> None:
    config = sink_notifier(smtp_starttls, starttls=True, username="alice", verify=False)
    t = closing(EmailTransport("mail", config, PASSWORD))
    assert (await t.send(make_message())).outcome == "delivered"


async def test_wrong_password_is_retried_without_leaking_it(
    smtp_starttls: SmtpSink, closing: Closer
) -> None:
    sink = smtp_starttls
    wrong = "not-the-password-4711"
    config = sink_notifier(sink, starttls=True, username="alice", ca_file=str(sink.ca_file))
    t = closing(EmailTransport("mail", config, wrong))
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "535" in delivery.detail
    assert wrong not in delivery.detail


async def test_temporary_refusal_then_delivery_keeps_the_message_id(
    smtp_sink: SmtpSink, closing: Closer
) -> None:
    t = closing(EmailTransport("mail", sink_notifier(smtp_sink), None))
    message = make_message()
    smtp_sink.fail_next(2, "451 4.3.0 mailbox busy")  # both recipients, first attempt

    first = await t.send(message)
    second = await t.send(message)

    assert first.outcome == "retry"
    assert "for now" in first.detail and "451" in first.detail
    assert second.outcome == "delivered"
    assert smtp_sink.messages[0].message["Message-ID"] == message_id(message)


async def test_permanent_refusal_says_so(smtp_sink: SmtpSink, closing: Closer) -> None:
    t = closing(EmailTransport("mail", sink_notifier(smtp_sink), None))
    smtp_sink.fail_next(2, "550 5.1.1 no such user")
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "permanently" in delivery.detail


async def test_refused_data_is_retried(smtp_sink: SmtpSink, closing: Closer) -> None:
    t = closing(EmailTransport("mail", sink_notifier(smtp_sink), None))
    smtp_sink.fail_next(1, "554 5.6.0 content rejected", at="DATA")
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "permanent rejection: 554" in delivery.detail


async def test_one_recipient_refused_is_still_delivered(
    smtp_sink: SmtpSink, closing: Closer
) -> None:
    t = closing(EmailTransport("mail", sink_notifier(smtp_sink), None))
    smtp_sink.fail_next(1, "550 5.1.1 no such user")  # the first recipient only
    delivery = await t.send(make_message())
    assert delivery.outcome == "delivered"
    assert "refused: ops@example.test (550" in delivery.detail
    assert smtp_sink.messages[0].rcpt_tos == ["noc@example.test"]


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never says a word (no SMTP greeting)."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_silent_server_times_out(silent_server: int, closing: Closer) -> None:
    t = closing(EmailTransport("mail", notifier("127.0.0.1", silent_server, timeout="300ms"), None))
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "0.3s" in delivery.detail or "timed out" in delivery.detail.lower()


async def test_refused_connection_is_retried(closing: Closer) -> None:
    t = closing(EmailTransport("mail", notifier("127.0.0.1", free_port()), None))
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "email mail" in delivery.detail


def test_mail_without_text_renders_the_data() -> None:
    message = make_message(
        "failover.failed",
        "sh",
        summary="failover\nfailed\r\n for sh",
        text="",
        data={"site": "sh", "nodes": ["sh-1", "sh-2"]},
    )
    config = notifier("localhost", 25)
    mail = build_mail(message, config)
    assert mail["Subject"] == "[nodevigil] failover failed for sh"
    body = mail.get_content()
    assert body.startswith("failover.failed sh at ")
    assert 'nodes: ["sh-1", "sh-2"]' in body
    assert "site: sh" in body
    assert mail["Auto-Submitted"] == "auto-generated"


def test_message_id_is_a_valid_msg_id() -> None:
    assert message_id(make_message(message_id="a b<c>@d")) == "<a-b-c--d@nodevigil>"


def test_password_without_username_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    config = notifier("localhost", 25, password={"secret_env": "SMTP_PASSWORD"})
    with pytest.raises(ConfigError, match=r"notifiers\.mail\.smtp\.username"):
        build_transport("mail", config, tmp_path, None)


def test_unreadable_password_names_the_notifier(tmp_path: Path) -> None:
    config = notifier("localhost", 25, username="alice", password={"secret_file": "nope"})
    with pytest.raises(ConfigError, match=r"notifiers\.mail\.smtp\.password: cannot read"):
        build_transport("mail", config, tmp_path, None)
