"""Notice ids (``webhook-id``, the mail's Message-ID) and what a customer reads in a notice.

Receivers deduplicate by id, as the Standard Webhooks specification asks: an id must never
name two different notices, not from two installations and not after ``state_dir`` is restored
from an older backup, while a notice composed again (a retry, a new leader) keeps its id. The
stores and the installation id are the real SQLite ones in a real state directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from failover.incidents.manager import IncidentManager
from failover.incidents.messages import Composer, local_time
from failover.incidents.model import Incident
from failover.notify.metrics import NotifyMetrics
from nodevigil.core.clock import ManualClock
from nodevigil.core.config import Config, parse_config
from nodevigil.core.errors import ConfigError
from nodevigil.core.events import EventBus
from nodevigil.state.backend import SqliteBackend
from tests.incidents.test_incidents import make_config

START = 1_767_225_600.0 + 1_000.25  # 2026-01-01 00:16:40.25 UTC


class Installation:
    """One state directory with its real stores, and an incident manager on them."""

    def __init__(self, state_dir: Path, config: Config | None = None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.backend = SqliteBackend(state_dir)
        self.config = config or make_config()
        self.clock = ManualClock()

    async def __aenter__(self) -> Installation:
        self.store = self.backend.incident_store()
        await self.store.open()
        self.installation = await self.backend.installation_id()
        self.manager = IncidentManager(
            self.store,
            config=lambda: self.config,
            bus=EventBus(),
            clock=self.clock,
            unavailable=lambda: {},
            metrics=NotifyMetrics(CollectorRegistry()),
            outbox_changed=lambda: None,
            installation=self.installation,
        )
        await self.manager.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()

    async def outage(self, start: float) -> tuple[Incident, set[str]]:
        """An outage of ``web`` from ``start``, resolved a minute later; every notice's id."""
        incident = await self.manager.service_down("web", start)
        await self.manager.service_up("web", start + 60)
        rows = await self.store.notifications(incident=incident.id)
        return incident, {r.message.id for r in rows}


async def test_the_installation_id_is_drawn_once_and_kept(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "state")
    (tmp_path / "state").mkdir()
    first = await backend.installation_id()
    assert len(first) == 12 and int(first, 16) >= 0
    assert await SqliteBackend(tmp_path / "state").installation_id() == first
    (tmp_path / "other").mkdir()
    assert await SqliteBackend(tmp_path / "other").installation_id() != first


async def test_two_installations_never_send_the_same_id_for_the_same_incident(
    tmp_path: Path,
) -> None:
    async with (
        Installation(tmp_path / "one") as one,
        Installation(tmp_path / "two") as two,
    ):
        first, first_ids = await one.outage(START)
        second, second_ids = await two.outage(START)
    # The same shape: incident 1 of web, from the same millisecond, the same plan.
    assert (first.id, first.started_at) == (second.id, second.started_at) == (1, START)
    assert len(first_ids) == len(second_ids) == 4  # s0 hook and mail, s1 phone, resolve
    assert not first_ids & second_ids
    assert all(i.startswith(f"{one.installation}.inc1-") for i in first_ids)


async def test_a_restored_older_state_dir_reuses_no_notice_id(tmp_path: Path) -> None:
    state_dir, backup = tmp_path / "state", tmp_path / "backup"
    async with Installation(state_dir) as before:
        installation = before.installation
        await before.outage(START - 86_400)  # yesterday's incident, in the backup too
    shutil.copytree(state_dir, backup)

    async with Installation(state_dir) as live:
        sent, sent_ids = await live.outage(START)
    shutil.rmtree(state_dir)
    shutil.copytree(backup, state_dir)  # the operator restores yesterday's backup

    async with Installation(state_dir) as restored:
        assert restored.installation == installation  # the same installation, restored
        again, again_ids = await restored.outage(START + 3_600)
    assert again.id == sent.id == 2  # the restored state hands the number out again ...
    assert not sent_ids & again_ids  # ... but none of the ids already sent


async def test_a_notice_composed_again_keeps_its_id(tmp_path: Path) -> None:
    """What a new leader (or a restarted process) composes for the same step is the same."""
    async with Installation(tmp_path / "state") as one:
        incident = await one.manager.service_down("web", START)
        rows = await one.store.notifications(incident=incident.id)
        stored = await one.store.get(incident.id)
        assert stored is not None
        again = Composer(one.config, installation=one.installation).opening(stored, START, None)
    assert {o.message.id for o in again} == {r.message.id for r in rows}


# --- what the customer reads ------------------------------------------------------------------


def _config(**extra: Any) -> Config:
    config = make_config(timezone="Europe/Berlin", **extra)
    customers = [c.model_dump() for c in config.customers]
    customers[0]["timezone"] = "Asia/Shanghai"  # acme; globex keeps the billing time zone
    customers[1]["services"] = ["web"]
    return make_config(timezone="Europe/Berlin", customers=customers, **extra)


async def test_notices_say_times_in_the_customers_zone_to_the_second(tmp_path: Path) -> None:
    config = _config()
    async with Installation(tmp_path / "state", config) as one:
        incident = await one.manager.service_down("web", START)
        await one.manager.service_up("web", START + 125.5)
        rows = await one.store.notifications(incident=incident.id)
    text = {(r.customer, r.step, r.message.notifier): r.message.text for r in rows}
    opened = text[("acme", "s0", "hook")]
    assert "since 2026-01-01 08:16:40 +08:00 (Asia/Shanghai)." in opened
    assert "Started:   2026-01-01 08:16:40 +08:00 (Asia/Shanghai)\n" in opened
    resolved = text[("acme", "resolve", "hook")]
    assert "Resolved:  2026-01-01 08:18:45 +08:00 (Asia/Shanghai)\n" in resolved
    # A customer without a zone of its own reads the billing time zone.
    assert (
        "Started:   2026-01-01 01:16:40 +01:00 (Europe/Berlin)\n" in text[("globex", "s0", "hook")]
    )
    assert all(".25" not in t and ".5" not in t for t in text.values())  # no fractions
    assert all("Status:" not in t for t in text.values())  # no status page configured
    assert all("status_page" not in r.message.data for r in rows)


async def test_notices_link_the_public_status_page(tmp_path: Path) -> None:
    config = _config(status_page={"url": "https://status.provider.example/"})
    async with Installation(tmp_path / "state", config) as one:
        incident = await one.manager.service_down("web", START)
        await one.manager.service_up("web", START + 60)
        rows = await one.store.notifications(incident=incident.id)
    assert rows and all(
        "\nStatus:    https://status.provider.example/\n" in r.message.text for r in rows
    )
    assert {r.message.data["status_page"] for r in rows} == {"https://status.provider.example/"}


def test_local_time_in_utc_and_across_daylight_saving() -> None:
    assert local_time(START, "UTC") == "2026-01-01 00:16:40 UTC"
    summer = 1_782_864_000.9  # 2026-07-01 00:00:00.9 UTC
    assert local_time(summer, "Europe/Berlin") == "2026-07-01 02:00:00 +02:00 (Europe/Berlin)"
    assert local_time(summer, "America/St_Johns") == (
        "2026-06-30 21:30:00 -02:30 (America/St_Johns)"
    )


def test_a_customer_time_zone_that_does_not_exist_is_refused_with_its_key() -> None:
    data = {"customers": [{"id": "acme", "timezone": "Mars/Olympus"}]}
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert "customers[0].timezone" in str(refused.value) and "Mars/Olympus" in str(refused.value)
