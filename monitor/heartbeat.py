"""The daemon's side of the node agent: heartbeats and last-wills from MQTT, judged as a probe."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from nodevigil.clock import Clock
from nodevigil.config import MqttProbe
from nodevigil.config.schema import Mqtt

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024  # a heartbeat is a few hundred bytes; anything huge is hostile
FIGURES = ("cpu_percent", "memory_percent", "disk_percent", "load1")


@dataclass(slots=True)
class AgentState:
    """What the daemon last heard from one node agent."""

    last_seen: float | None = None  # monotonic
    last_wall: float | None = None
    offline: bool = False  # the agent's last-will (or clean goodbye) was announced
    figures: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    alive_marks: int = 0  # bumped by every heartbeat and "online": newer than a pending will


# Agents reconnect with jittered backoff capped at 10 s (x1.5 jitter); after our own reconnect
# they get that long, on top of max_silence, to be heard again before silence counts.
AGENT_MAX_BACKOFF = 15.0
WILL_CONFIRM = 0.25  # seconds our own link must survive a last-will before we believe it


def _call_later(delay: float, callback: Callable[[], None]) -> None:
    asyncio.get_running_loop().call_later(delay, callback)


class HeartbeatBoard:
    """Latest heartbeat per agent, the broker link's state, and counters for dropped payloads."""

    def __init__(
        self,
        clock: Clock,
        *,
        schedule: Callable[[float, Callable[[], None]], None] = _call_later,
        will_confirm: float = WILL_CONFIRM,
    ) -> None:
        self._clock = clock
        self._schedule = schedule
        self._will_confirm = will_confirm
        self.agents: dict[str, AgentState] = {}
        self.connected = False
        self.connected_since: float | None = None  # monotonic time of the last (re)connect
        self.link_epoch = 0  # bumped on every link change, to tell stale wills apart
        self.dropped: dict[str, int] = {}
        self.on_offline: Callable[[str], None] | None = None

    def link_up(self) -> None:
        """The daemon (re)connected to the broker: silence is measured from now on."""
        self.connected = True
        self.connected_since = self._clock.monotonic()
        self.link_epoch += 1

    def link_down(self) -> None:
        """The daemon lost the broker: heartbeat probes are inconclusive until it is back."""
        self.connected = False
        self.link_epoch += 1

    def drop(self, reason: str) -> None:
        """Count a payload that was refused."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def handle(self, topic: str, payload: bytes, prefix: str, *, retained: bool = False) -> None:
        """Take one MQTT message; malformed ones are counted and dropped, never raised."""
        parts = topic.split("/")
        base = prefix.strip("/").split("/")
        if len(parts) != len(base) + 3 or parts[: len(base)] != base or parts[-3] != "nodes":
            self.drop("topic")
            return
        agent, kind = parts[-2], parts[-1]
        if len(payload) > MAX_PAYLOAD:
            self.drop("too_large")
            return
        if kind == "status":
            self._status(agent, payload, retained)
        elif kind == "heartbeat":
            self._heartbeat(agent, payload)
        else:
            self.drop("topic")

    def _status(self, agent: str, payload: bytes, retained: bool) -> None:
        text = payload.decode("utf-8", "replace").strip()
        state = self.agents.setdefault(agent, AgentState())
        if text == "offline":
            if retained:
                return  # a will from before our (re)connect: silence will judge the agent
            # A broker that shuts down publishes every client's will, ours included; believe
            # the will only if our own link is still up a moment later.
            epoch, mark = self.link_epoch, state.alive_marks
            self._schedule(self._will_confirm, lambda: self._confirm_offline(agent, epoch, mark))
        elif text == "online":
            state.offline = False
            state.alive_marks += 1
        elif text:  # an empty retained payload just clears the topic
            self.drop("malformed")

    def _confirm_offline(self, agent: str, epoch: int, mark: int) -> None:
        state = self.agents.setdefault(agent, AgentState())
        if not self.connected or epoch != self.link_epoch or state.alive_marks != mark:
            return  # our link changed, or the agent spoke again since its will
        state.offline = True
        if self.on_offline is not None:
            self.on_offline(agent)

    def _heartbeat(self, agent: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.drop("malformed")
            return
        figures = _figures(data)
        if figures is None:
            self.drop("malformed")
            return
        state = self.agents.setdefault(agent, AgentState())
        state.last_seen = self._clock.monotonic()
        state.last_wall = self._clock.wall()
        state.offline = False
        state.alive_marks += 1
        state.figures = figures
        seq = data.get("seq")
        state.seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else state.seq + 1

    def judge(self, spec: MqttProbe, agent: str, grace: float | None) -> tuple[bool | None, str]:
        """The mqtt probe: (ok, detail); None while the daemon's own broker link is in doubt."""
        if not self.connected or self.connected_since is None:
            return None, "daemon is not connected to the MQTT broker"
        now = self._clock.monotonic()
        state = self.agents.get(agent)
        if state is not None and state.offline:
            return False, "agent announced offline (last-will)"
        silence_limit = spec.max_silence
        heard = state.last_seen if state is not None else None
        since_link = now - self.connected_since
        if heard is None or heard < self.connected_since:
            # After our own (re)connect, agents get a grace period to be heard again.
            if since_link <= (grace if grace is not None else silence_limit + AGENT_MAX_BACKOFF):
                return None, "waiting for the first heartbeat since the broker link came up"
            return False, f"no heartbeat for {since_link:.1f}s"
        silence = now - heard
        if silence > silence_limit:
            return False, f"no heartbeat for {silence:.1f}s (max {silence_limit:g}s)"
        assert state is not None
        over = _over_limits(spec, state.figures)
        if over:
            return False, over
        return True, f"heartbeat {silence:.1f}s ago"


def _figures(data: Any) -> dict[str, float] | None:
    if not isinstance(data, dict):
        return None
    out: dict[str, float] = {}
    for key in FIGURES:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value) or value < 0:
            return None
        out[key] = float(value)
    return out


def _over_limits(spec: MqttProbe, figures: dict[str, float]) -> str:
    limits = spec.limits
    for key in FIGURES:
        limit = getattr(limits, key)
        value = figures.get(key)
        if limit is not None and value is not None and value > limit:
            return f"{key} {value:g} is over the limit {limit:g}"
    return ""


class MqttProber:
    """An mqtt probe: reads the board, no I/O of its own."""

    def __init__(self, spec: MqttProbe, agent: str, board: HeartbeatBoard, grace: float | None):
        self.spec = spec
        self._agent = agent
        self._board = board
        self._grace = grace

    async def check(self) -> tuple[bool | None, str, bool]:
        """Judge the agent's heartbeat; a last-will is decisive."""
        ok, detail = self._board.judge(self.spec, self._agent, self._grace)
        decisive = ok is False and detail.startswith("agent announced offline")
        return ok, detail, decisive


class HeartbeatListener:
    """Subscribes to every agent's heartbeat and status, reconnecting with jittered backoff."""

    def __init__(self, settings: Mqtt, board: HeartbeatBoard, password: str | None = None):
        self._settings = settings
        self._board = board
        self._password = password

    async def run(self) -> None:
        """Listen until cancelled."""
        url = aiomqtt_url(self._settings.url)
        prefix = self._settings.topic_prefix.strip("/")
        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    url.host,
                    url.port,
                    username=self._settings.username,
                    password=self._password,
                    identifier=f"nodevigil-{random.getrandbits(32):08x}",
                    keepalive=10,
                    tls_params=aiomqtt.TLSParameters() if url.tls else None,
                ) as client:
                    await client.subscribe(f"{prefix}/nodes/+/heartbeat", qos=0)
                    await client.subscribe(f"{prefix}/nodes/+/status", qos=1)
                    self._board.link_up()
                    log.info("connected to MQTT broker %s:%d", url.host, url.port)
                    delay = 0.5
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        self._board.handle(
                            str(message.topic), bytes(payload), prefix, retained=message.retain
                        )
            except aiomqtt.MqttError as exc:
                if self._board.connected:
                    log.warning("lost the MQTT broker: %s; reconnecting", exc)
                self._board.link_down()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """A parsed ``mqtt://host:port`` (or ``mqtts://``)."""

    host: str
    port: int
    tls: bool


def aiomqtt_url(url: str) -> BrokerUrl:
    """Split an ``mqtt(s)://host[:port]`` URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return BrokerUrl(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls)
