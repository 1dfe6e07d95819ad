"""The story played through the world: each step acts, then waits for the real outcome."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from nodevigil.app.demo.load import LoadLoop
from nodevigil.app.demo.receiver import Delivery
from nodevigil.app.demo.servers import poll_until
from nodevigil.app.demo.settings import (
    CURRENCY,
    CUSTOMER,
    DAILY_CHARGE,
    RECORD,
    SERVICE,
    SITES,
    Timings,
    node_names,
)
from nodevigil.app.demo.view import Narrator, describe
from nodevigil.app.demo.world import DemoError, World
from nodevigil.core.errors import NodevigilError
from nodevigil.core.events import Event
from sla.model import CreditRow
from sla.render import render_table

STEPS = 6
VICTIM = "east-2"
FLAP_HOLD = re.compile(r"in a (\d+)s hold-down \(flap (\d+)\)")  # the controller's why
PAUSE = 2.0  # seconds (at speed 1) between steps, to look at the live view


class Story:
    """Plays the six steps and keeps the figures it measured."""

    def __init__(self, world: World, narrator: Narrator, timings: Timings) -> None:
        self.world = world
        self.n = narrator
        self.t = timings
        self.figures: list[tuple[str, str]] = []
        self.events: list[Event] = []
        self.seen = asyncio.Condition()

    # --- plumbing ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Follow nodevigil's events: shown as they come, kept for the measurements."""
        assert self.world.daemon is not None
        subscription = self.world.daemon.bus.subscribe()

        async def follow() -> None:
            async for event in subscription:
                line = describe(event)
                if line:
                    self.n.event(line)
                async with self.seen:
                    self.events.append(event)
                    self.seen.notify_all()

        task = asyncio.create_task(follow(), name="demo-events")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            subscription.close()

    async def event(self, kind: str, after: float, within: float) -> Event:
        """The first event of ``kind`` published at or after wall time ``after``."""
        try:
            async with asyncio.timeout(within), self.seen:
                while True:
                    for event in self.events:
                        if event.kind == kind and event.at >= after:
                            return event
                    await self.seen.wait()
        except TimeoutError:
            raise DemoError(f"no {kind} event within {within:g}s") from None

    async def until(
        self, check: Callable[[], Awaitable[bool]], since: float, within: float, what: str
    ) -> float:
        """Seconds from ``since`` (monotonic) until ``check()`` holds; DemoError past ``within``."""

        async def guarded() -> bool:
            self.world.check_daemon()
            try:
                return await check()
            except (NodevigilError, OSError, TimeoutError) as exc:
                if isinstance(exc, DemoError):
                    raise
                return False  # a read that failed this once; the deadline still holds

        try:
            await poll_until(guarded, within=within, interval=0.02, what=what)
        except TimeoutError as exc:
            raise DemoError(str(exc)) from None
        return time.monotonic() - since

    async def webhook(self, kind: str, within: float) -> Delivery:
        """The customer's first delivery of ``kind``; DemoError when missing or badly signed."""
        try:
            delivery = await self.world.receiver.wait_for(kind, within)
        except TimeoutError:
            raise DemoError(f"no {kind} webhook reached the customer within {within:g}s") from None
        if not delivery.valid:
            raise DemoError(f"the {kind} webhook's signature is invalid: {delivery.problem}")
        return delivery

    async def api(self, method: str, path: str, body: str | None = None) -> Any:
        """One call to nodevigil's API with the admin token; the JSON answer."""
        headers = {"Authorization": f"Bearer {self.world.admin_token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.world.api_url}{path}", data=body, headers=headers) as r,
        ):
            answer = await r.json()
            if r.status != 200:
                raise DemoError(f"{method} {path}: {r.status} {answer}")
            return answer

    def measured(self, what: str, figure: str) -> None:
        """Keep a figure for the summary."""
        self.figures.append((what, figure))

    def lb_name(self, site: str) -> str:
        """How the story names a site's local load balancer."""
        return f"HAProxy {site}" if self.world.haproxies else f"{site}'s in-process LB"

    def dns_name(self) -> str:
        """How the story names the global load balancer."""
        return "BIND" if self.world.bind else "the in-process DNS stand-in"

    async def states(self, names: list[str], wanted: str) -> bool:
        """Whether every node in ``names`` has the admin state ``wanted`` in its LB."""
        for name in names:
            if await self.world.lb_state(name) != wanted:
                return False
        return True

    # --- the story ---------------------------------------------------------------------------

    async def ready(self) -> None:
        """Wait until every node is up and in, and DNS publishes both sites."""
        start = time.monotonic()
        everyone = list(self.world.nodes)
        addresses = set(SITES.values())

        async def settled() -> bool:
            if self.world.api_url is None or self.world.status() is None:
                return False
            if any(self.world.verdict(n) != "up" for n in everyone):
                return False
            return await self.states(everyone, "ready") and await self.world.published() == (
                addresses
            )

        took = await self.until(settled, start, self.t.deadline(20), "the world ready")
        self.n.say(
            f"world ready after {took:.1f}s: 6 nodes up and in their load balancers; "
            f"{self.dns_name()} answers {RECORD} A {', '.join(sorted(addresses))}"
        )

    async def play(self) -> None:
        """All six steps, in order, with a pause after each to look at the outcome."""
        for step in (
            self.node_dies,
            self.node_recovers,
            self.site_dies,
            self.everything_dies,
            self.recovery,
        ):
            await step()
            await asyncio.sleep(self.t.scaled(PAUSE))  # pacing for the eye, not correctness
        await self.credits()

    async def node_dies(self) -> None:
        """Step 1: one node dies and is taken out while requests keep flowing."""
        self.n.step(1, STEPS, f"a node dies: {VICTIM}")
        site = self.world.site_of[VICTIM]
        haproxy = self.world.haproxies.get(site)
        load = LoadLoop(haproxy.url) if haproxy else None
        if load is not None:
            load.start()
            await asyncio.sleep(self.t.scaled(1.0))  # some traffic before the failure
        start = time.monotonic()
        await self.world.kill(VICTIM)
        gone = (
            "its HTTP server and its node agent are"
            if self.world.has_agents
            else ("its HTTP server is")
        )
        self.n.say(f"killed {VICTIM}: {gone} gone")
        within = self.t.deadline(10)

        async def down() -> bool:
            return self.world.verdict(VICTIM) == "down"

        async def out() -> bool:
            return await self.world.lb_state(VICTIM) in ("maint", "drain")

        judged = await self.until(down, start, within, f"{VICTIM} judged down")
        taken_out = await self.until(out, start, within, f"{VICTIM} out of its load balancer")
        self.n.say(
            f"{VICTIM} judged down {judged:.2f}s after it died; out of {self.lb_name(site)} "
            f"{taken_out:.2f}s after it died (server state read back: "
            f"{await self.world.lb_state(VICTIM)})"
        )
        self.measured(f"{VICTIM} judged down", f"{judged:.2f}s after it died")
        self.measured(f"{VICTIM} out of {self.lb_name(site)}", f"{taken_out:.2f}s after it died")
        if load is None:
            self.n.say("no HAProxy: requests through a load balancer are not part of this run")
            return
        await asyncio.sleep(self.t.scaled(1.0))  # and some after it
        await load.stop()
        spread = ", ".join(f"{name} {count}" for name, count in sorted(load.answered_by.items()))
        failures = ", ".join(f"{count}x {why}" for why, count in load.failures.items())
        self.n.say(
            f"{load.sent} requests through HAProxy {site} ({load.url}) around the failure: "
            f"{load.failed} failed{f' ({failures})' if failures else ''}; answered by {spread}"
        )
        self.measured(f"requests through HAProxy {site}", f"{load.sent} sent, {load.failed} failed")

    async def node_recovers(self) -> None:
        """Step 2: the node comes back and is put back after its hold-down."""
        self.n.step(2, STEPS, f"{VICTIM} recovers and is put back after its hold-down")
        site = self.world.site_of[VICTIM]
        start = time.monotonic()
        await self.world.revive(VICTIM)
        self.n.say(f"revived {VICTIM} on the same port")
        within = self.t.deadline(20)

        async def up() -> bool:
            return self.world.verdict(VICTIM) == "up"

        async def back() -> bool:
            return await self.world.lb_state(VICTIM) == "ready"

        judged = await self.until(up, start, within, f"{VICTIM} judged up")
        self.n.say(
            f"{VICTIM} judged up {judged:.2f}s after it came back; held out for its "
            f"{self.t.hold_down:g}s hold-down"
        )
        returned = await self.until(back, start, within, f"{VICTIM} back in")
        self.n.say(f"{VICTIM} back in {self.lb_name(site)} {returned:.2f}s after it came back")
        self.measured(f"{VICTIM} back in", f"{returned:.2f}s after it came back")

    async def site_dies(self) -> None:
        """Step 3: every node of east dies; DNS stops answering with east's address."""
        self.n.step(3, STEPS, "a whole site dies: east")
        victims = node_names("east")
        start = time.monotonic()
        await asyncio.gather(*(self.world.kill(name) for name in victims))
        self.n.say(f"killed {', '.join(victims)}")

        async def withdrawn() -> bool:
            return SITES["east"] not in await self.world.published()

        took = await self.until(withdrawn, start, self.t.deadline(10), "east withdrawn from DNS")
        answer = ", ".join(sorted(await self.world.published()))
        self.n.say(
            f"{self.dns_name()} answers {RECORD} A {answer} {took:.2f}s after the site died: "
            f"east ({SITES['east']}) withdrawn"
        )
        self.measured("east withdrawn from DNS", f"{took:.2f}s after the site died")
        status = self.world.status()
        east = next((s for s in status.sites if s.name == "east"), None) if status else None
        if east is not None and east.panic:
            self.n.say(
                f"east: {east.nodes_out} nodes out, the last kept in at the site's floor "
                "(failover.panic: a whole site failing at once may be a monitoring fault)"
            )

    async def everything_dies(self) -> None:
        """Step 4: west dies too; an incident opens and the customer's webhook arrives."""
        self.n.step(4, STEPS, "everything dies: west too")
        victims = node_names("west")
        wall = time.time()
        await asyncio.gather(*(self.world.kill(name) for name in victims))
        self.n.say(f"killed {', '.join(victims)}: no site of {SERVICE} can serve")
        within = self.t.deadline(15)
        down = await self.event("service.unavailable", wall, within)
        self.n.say(f"{SERVICE} unavailable {down.at - wall:.2f}s after the last site died")
        opened = await self.event("incident.opened", wall, within)
        delivery = await self.webhook("incident.opened", within)
        number = delivery.payload.get("data", {}).get("incident", {}).get("id")
        latency = delivery.arrived_at - opened.at
        self.n.say(f"incident #{number} opened for customer {CUSTOMER}")
        self.n.say(
            f"customer webhook received: incident.opened (signature valid), "
            f"{latency * 1000:.0f} ms after the incident opened"
        )
        self.measured("incident opened", f"{opened.at - wall:.2f}s after the last site died")
        self.measured(
            "customer webhook (signature valid)", f"{latency * 1000:.0f} ms after it opened"
        )
        answer = ", ".join(sorted(await self.world.published()))
        self.n.say(f"{self.dns_name()} keeps answering {answer}: the last site is never withdrawn")

    async def recovery(self) -> None:
        """Step 5: every node comes back; the incident resolves and the customer is told."""
        self.n.step(5, STEPS, "recovery")
        everyone = list(self.world.nodes)
        start, wall = time.monotonic(), time.time()
        for name in everyone:
            await self.world.revive(name)
        self.n.say("revived all six nodes")
        within = self.t.deadline(30)
        back = await self.event("service.available", wall, within)
        self.n.say(f"{SERVICE} available again {back.at - wall:.2f}s after the nodes came back")
        resolved = await self.event("incident.resolved", wall, within)
        delivery = await self.webhook("incident.resolved", within)
        self.n.say(
            f"customer webhook received: incident.resolved (signature valid), "
            f"{(delivery.arrived_at - resolved.at) * 1000:.0f} ms after the incident resolved"
        )
        self.measured("service available again", f"{back.at - wall:.2f}s after recovery")

        doubled: dict[str, str] = {}

        async def all_in() -> bool:
            status = self.world.status()
            for node in status.nodes if status else []:
                match = FLAP_HOLD.search(node.why)
                if match and int(match.group(2)) > 0:
                    doubled[node.name] = match.group(1)
            return await self.states(everyone, "ready")

        async def both_published() -> bool:
            return await self.world.published() == set(SITES.values())

        async def sites_back() -> float:
            took = await self.until(both_published, start, within, "both sites back in DNS")
            self.n.say(
                f"{self.dns_name()} answers {RECORD} A {', '.join(sorted(SITES.values()))} "
                f"again {took:.2f}s after the recovery (site hold-down {self.t.hold_down:g}s)"
            )
            return took

        async def nodes_back() -> float:
            took = await self.until(all_in, start, within, "every node back in")
            self.n.say(f"all six nodes back in their load balancers {took:.2f}s after the recovery")
            return took

        sites_in, _ = await asyncio.gather(sites_back(), nodes_back())
        for name, hold in sorted(doubled.items()):
            self.n.say(
                f"{name} had failed again soon after its return, so its hold-down grew to {hold}s"
            )
        self.measured("both sites back in DNS", f"{sites_in:.2f}s after recovery")

    async def credits(self) -> None:
        """Step 6: the ledger's outage becomes acme's credit for the day."""
        self.n.step(6, STEPS, "the SLA credit for the day")
        closed: list[dict[str, Any]] = []

        async def recorded() -> bool:
            body = await self.api("GET", f"/api/v1/sla/ledger?service={SERVICE}")
            closed[:] = [i for i in body["intervals"] if i["end"] is not None]
            return bool(closed)

        await self.until(recorded, time.monotonic(), self.t.deadline(10), "the ledger interval")
        entry = closed[-1]
        self.n.say(
            f"ledger: {SERVICE} unavailable from {entry['start']} to {entry['end']} "
            f"(cause {entry['cause']})"
        )
        day = datetime.fromisoformat(entry["start"]).date()
        csv = f"customer,service,date,amount,currency\n{CUSTOMER},{SERVICE},{day},"
        csv += f"{DAILY_CHARGE},{CURRENCY}\n"
        await self.api("POST", "/api/v1/sla/charges", csv)
        self.n.say(f"imported {CUSTOMER}'s charge for {day}: {DAILY_CHARGE} {CURRENCY}")
        body = await self.api("GET", f"/api/v1/sla/credits?customer={CUSTOMER}")
        rows = [credit_row(item) for item in body["credits"]]
        self.n.block(render_table(rows, ZoneInfo("UTC")))
        row = next((r for r in rows if r.day == day and r.service == SERVICE), None)
        if row is None or row.credit <= 0:
            raise DemoError(f"no credit for {CUSTOMER}/{SERVICE} on {day}: {body['credits']}")
        self.n.say(
            f"{row.unavailable_minutes} unavailable minute(s) of {row.minutes_in_day}: "
            f"{CUSTOMER} gets {row.credit} {row.currency} of the day's {row.charge} back "
            "(clause VIII.8)"
        )
        self.measured("credit", f"{row.credit} {row.currency} of {row.charge}")


def credit_row(item: dict[str, Any]) -> CreditRow:
    """A credit row from the API's JSON form (money as strings, the day as YYYY-MM-DD)."""
    return CreditRow(
        customer=str(item["customer"]),
        service=str(item["service"]),
        day=date.fromisoformat(str(item["date"])),
        unavailable_minutes=int(item["unavailable_minutes"]),
        minutes_in_day=int(item["minutes_in_day"]),
        charge=Decimal(str(item["charge"])),
        credit=Decimal(str(item["credit"])),
        currency=str(item["currency"]),
    )
