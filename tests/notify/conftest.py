"""Fixtures for the transport tests: real receivers, and transports closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.notify.receivers import Closer, SmtpSink, WebhookReceiver, run_alertmanager


@pytest.fixture
async def closing() -> AsyncIterator[Closer]:
    """Register transports to close at the end of the test (warnings are errors here)."""
    closer = Closer()
    yield closer
    await closer.close()


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    """A Standard Webhooks receiver on an ephemeral loopback port."""
    async with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[str]:
    """The base URL of a real Alertmanager."""
    async with run_alertmanager(tmp_path) as url:
        yield url


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    """A plain SMTP server."""
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
async def smtp_starttls() -> AsyncIterator[SmtpSink]:
    """An SMTP server that requires STARTTLS, then AUTH as alice / wonderland."""
    async with SmtpSink("starttls", users={"alice": "wonderland"}) as sink:
        yield sink
