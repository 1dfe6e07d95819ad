"""Plain-text mail handed to an SMTP server with aiosmtplib."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import aiosmtplib

from failover.notify.base import Delivery, Message
from nodevigil.core.config.schema import EmailNotifier

# RFC 5322 dot-atom characters: what may stand left of the "@" in a Message-ID.
_NOT_ATOM = re.compile(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]")


def message_id(message: Message) -> str:
    """``<id@nodevigil>``: the same on every retry, so mail systems can deduplicate."""
    return f"<{_NOT_ATOM.sub('-', message.id).strip('.') or 'message'}@nodevigil>"


def render_text(message: Message) -> str:
    """The mail body: ``message.text``, or the facts in ``data`` one per line."""
    if message.text.strip():
        return message.text if message.text.endswith("\n") else message.text + "\n"
    lines = [f"{message.kind} {message.subject} at {message.timestamp}".strip(), ""]
    for key in sorted(message.data):
        value = message.data[key]
        if not isinstance(value, str):
            value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def build_mail(message: Message, config: EmailNotifier) -> EmailMessage:
    """The mail for ``message``: From, To, Subject, Date, Message-ID and a text body."""
    summary = message.summary or f"{message.kind} {message.subject}".strip()
    mail = EmailMessage()
    mail["From"] = config.sender
    mail["To"] = ", ".join(config.to)
    # A header must stay on one line: newlines in a summary would be refused (or injected).
    mail["Subject"] = " ".join(f"{config.subject_prefix} {summary}".split())
    mail["Date"] = format_datetime(datetime.fromtimestamp(message.created_at, UTC))
    mail["Message-ID"] = message_id(message)
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
    mail.set_content(render_text(message))
    return mail


class EmailTransport:
    """Sends each message as one mail over a new SMTP connection (plain, STARTTLS or TLS)."""

    def __init__(
        self,
        name: str,
        config: EmailNotifier,
        password: str | None,
        *,
        base_dir: Path | None = None,
    ) -> None:
        smtp = config.smtp
        if smtp.starttls and smtp.tls:
            raise ValueError(f"notifier {name}: starttls and tls exclude each other")
        self.name = name
        self._config = config
        self._password = password
        ca_file = smtp.ca_file
        if ca_file is not None and base_dir is not None and not ca_file.is_absolute():
            ca_file = base_dir / ca_file
        self._ca_file = str(ca_file) if ca_file is not None else None

    async def send(self, message: Message) -> Delivery:
        """Hand the mail over once; accepted is delivered, anything else retry."""
        smtp = self._config.smtp
        where = f"email {self.name} ({smtp.host}:{smtp.port})"
        try:
            refused, answer = await aiosmtplib.send(
                build_mail(message, self._config),
                sender=self._config.sender,
                recipients=list(self._config.to),
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username if self._password is not None else None,
                password=self._password,
                timeout=smtp.timeout,
                use_tls=smtp.tls,
                start_tls=smtp.starttls,  # False: never upgrade unasked (a cert we cannot check)
                validate_certs=smtp.verify,
                cert_bundle=self._ca_file,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            each = ", ".join(f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients)
            kind = "permanently" if codes and all(c >= 500 for c in codes) else "for now"
            return Delivery.retry(f"{where}: every recipient refused {kind}: {each}")
        except aiosmtplib.SMTPResponseException as exc:
            kind = "permanent rejection" if exc.code >= 500 else "temporary failure"
            return Delivery.retry(f"{where}: {kind}: {exc.code} {exc.message}")
        except TimeoutError:
            return Delivery.retry(f"{where}: no answer within {smtp.timeout:g}s")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return Delivery.retry(f"{where}: {type(exc).__name__}: {exc}")
        detail = f"{where}: accepted: {answer}".strip()
        if refused:
            each = ", ".join(f"{rcpt} ({r.code} {r.message})" for rcpt, r in refused.items())
            detail += f"; refused: {each}"
        return Delivery.ok(detail)

    async def close(self) -> None:
        """Nothing to release: each send uses its own connection."""
