"""The daemon's side of the node agent: heartbeats and last-wills from MQTT, judged as a probe."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from monitor.agentauth import (
    MAX_COUNT,
    Position,
    Stamp,
    derive_key,
    read_stamp,
    secret_problem,
    verify,
)
from nodevigil.core.clock import Clock
from nodevigil.core.config import MqttProbe
from nodevigil.core.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PAYLOAD = 8 * 1024  # a heartbeat is a few hundred bytes; anything bigger is hostile
FIGURES = ("cpu_percent", "memory_percent", "disk_percent", "load1")


@dataclass(slots=True)
class AgentState:
    """What the daemon last heard from one configured node agent."""

    last_seen: float | None = None  # monotonic
    last_wall: float | None = None
    offline: bool = False  # the agent's last-will (or clean goodbye) was announced
    figures: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    alive_marks: int = 0  # bumped by every accepted heartbeat and "online"
    position: Position = field(default_factory=Position)  # newest authenticated stamp


# Agents reconnect with jittered backoff capped at 10 s (x1.5 jitter); after our own reconnect
# they get that long, on top of max_silence, to be heard again before silence counts.
AGENT_MAX_BACKOFF = 15.0
WILL_CONFIRM = 0.25  # seconds our own link must survive a last-will before we believe it
REFUSAL_LOG_EVERY = 600.0  # a refusal that goes on is logged again after this long
UNSIGNED = (b"online", b"offline")  # the status of agents without a key (and of old agents)
REASONS = {
    "topic": "not a topic of the form PREFIX/nodes/AGENT/(heartbeat|status)",
    "too_large": "payload larger than 8 KiB",
    "malformed": "malformed payload",
    "unknown_agent": "no mqtt probe names this agent",
    "unsigned": "not signed, and mqtt.agent_secret is set",
    "bad_mac": "signature does not verify (wrong key, or forged)",
    "wrong_node": "signed for another node than its topic names",
    "replayed": "not newer than the last message accepted (replayed or stale)",
    "clock_skew": "a new boot whose sent_at is too far from the daemon's clock",
    "unknown_connection": "a will before any other message of the agent since our start",
}


def _call_later(delay: float, callback: Callable[[], None]) -> None:
    asyncio.get_running_loop().call_later(delay, callback)


def _shown(name: str) -> str:
    """A name from the wire, bounded for a log line."""
    return repr(name[:64] + ("..." if len(name) > 64 else ""))


class HeartbeatBoard:
    """Latest heartbeat per configured agent, the broker link's state, and refusal counters.

    Only agents named by a configured mqtt probe (``expect``) are tracked: messages for any
    other name are counted and dropped, so a client cannot grow the daemon's memory or its
    metrics. With an agent secret (``trust``) only messages signed with the node's key and
    newer than the last accepted one count; see ``monitor.agentauth``.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        schedule: Callable[[float, Callable[[], None]], None] = _call_later,
        will_confirm: float = WILL_CONFIRM,
        agents: Iterable[str] = (),
        agent_secret: str | None = None,
        max_clock_skew: float = 120.0,
    ) -> None:
        self._clock = clock
        self._schedule = schedule
        self._will_confirm = will_confirm
        self.agents: dict[str, AgentState] = {}
        self.connected = False
        self.connected_since: float | None = None  # monotonic time of the last (re)connect
        # Monotonic time we sent the latest request the broker answered (``link_confirmed``):
        # our link is known to work up to then, and agents' silence is judged only up to it.
        self.confirmed_at: float | None = None
        self.link_epoch = 0  # bumped on every link change, to tell stale wills apart
        self.dropped: dict[str, int] = {}
        # Called with the agent's name when its will is believed: the monitor confirms it.
        self.on_offline: Callable[[str], None] | None = None
        self._secret: str | None = None
        self._keys: dict[str, bytes] = {}
        self._max_skew = max_clock_skew
        self._logged: dict[tuple[str, str], float] = {}  # (agent or "", reason) -> monotonic
        self.trust(agent_secret, max_clock_skew=max_clock_skew)
        self.expect(agents)

    @property
    def authenticated(self) -> bool:
        """Whether agents must sign their messages (an agent secret is configured)."""
        return self._secret is not None

    def expect(self, agents: Iterable[str]) -> None:
        """Track exactly these agents (the configured mqtt probes'); forget the others."""
        wanted = set(agents)
        self.agents = {a: self.agents.get(a) or AgentState() for a in sorted(wanted)}
        self._keys = {a: k for a, k in self._keys.items() if a in wanted}
        self._logged = {k: t for k, t in self._logged.items() if k[0] in wanted or not k[0]}

    def trust(self, agent_secret: str | None, *, max_clock_skew: float) -> None:
        """Require messages signed with keys derived from ``agent_secret`` (None: any)."""
        problem = secret_problem(agent_secret) if agent_secret is not None else ""
        if problem:
            raise ConfigError([problem])
        self._secret = agent_secret
        self._keys = {}
        self._max_skew = max_clock_skew

    def _key(self, agent: str) -> bytes:
        key = self._keys.get(agent)
        if key is None:
            assert self._secret is not None
            key = self._keys[agent] = derive_key(self._secret, agent)
        return key

    @property
    def clock(self) -> Clock:
        """The clock the board judges by (the listener times its link checks on it)."""
        return self._clock

    def link_up(self) -> None:
        """The daemon (re)connected to the broker: silence is measured from now on."""
        self.connected = True
        self.connected_since = self.confirmed_at = self._clock.monotonic()
        self.link_epoch += 1

    def link_confirmed(self, sent: float) -> None:
        """The broker answered a request we sent at monotonic ``sent``: our link worked then.

        Without this a link that goes silent (an uplink cut: no FIN, no RST) looks up until
        MQTT's keepalive gives up, 10 to 20 s later, and every agent would look silent first.
        """
        if self.connected and (self.confirmed_at is None or sent > self.confirmed_at):
            self.confirmed_at = sent

    def link_down(self) -> None:
        """The daemon lost the broker: heartbeat probes are inconclusive until it is back."""
        self.connected = False
        self.link_epoch += 1

    def drop(self, reason: str, agent: str = "", *, heard: str = "") -> None:
        """Count a payload that was refused; log it once per agent and reason, not per message.

        ``agent`` is a configured agent; ``heard`` a name from the wire, shown (bounded) in
        the first log line only: names nobody configured never key anything.
        """
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        now = self._clock.monotonic()
        last = self._logged.get((agent, reason))
        if last is not None and now - last < REFUSAL_LOG_EVERY:
            return
        self._logged[(agent, reason)] = now
        if reason in ("unknown_agent", "topic"):
            log.warning(
                "dropping MQTT messages (%s), first from %s; counted in "
                "nodevigil_mqtt_payloads_dropped_total, not logged again for %gs",
                REASONS[reason],
                _shown(heard) if heard else "an unparsable topic",
                REFUSAL_LOG_EVERY,
            )
        else:
            log.warning(
                "dropping MQTT messages for agent %s: %s; counted in "
                "nodevigil_mqtt_payloads_dropped_total, not logged again for %gs",
                agent,
                REASONS[reason],
                REFUSAL_LOG_EVERY,
            )

    def handle(self, topic: str, payload: bytes, prefix: str, *, retained: bool = False) -> None:
        """Take one MQTT message; refused ones are counted and dropped, never raised."""
        parts = topic.split("/", 64)
        base = prefix.strip("/").split("/")
        if len(parts) != len(base) + 3 or parts[: len(base)] != base or parts[-3] != "nodes":
            self.drop("topic")
            return
        agent, kind = parts[-2], parts[-1]
        if kind not in ("status", "heartbeat"):
            self.drop("topic")
            return
        if agent not in self.agents:
            self.drop("unknown_agent", heard=agent)
            return
        if len(payload) > MAX_PAYLOAD:
            self.drop("too_large", agent)
            return
        if kind == "status":
            if not retained:  # a retained status is from before our (re)connect: old news
                self._status(agent, payload)
        else:
            self._heartbeat(agent, payload)

    def _decode(self, agent: str, kind: str, payload: bytes) -> tuple[dict[str, Any], Stamp | None]:
        """Parse and authenticate a JSON message; raise _Refused with the drop reason."""
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _Refused("malformed") from None
        if not isinstance(data, dict):
            raise _Refused("malformed")
        if data.get("node", agent) != agent:
            raise _Refused("wrong_node")
        stamp = read_stamp(data)
        if self._secret is None:
            return data, stamp  # no key to check: the old, trusting behaviour
        if "mac" not in data:
            raise _Refused("unsigned")
        if not verify(self._key(agent), kind, data):
            raise _Refused("bad_mac")
        if stamp is None:
            raise _Refused("malformed")
        return data, stamp

    def _in_order(self, state: AgentState, stamp: Stamp | None, *, will: bool) -> None:
        """Refuse a signed message that is not newer than the last accepted one."""
        if self._secret is None or stamp is None:
            return
        problem = state.position.problem(stamp, self._clock.wall(), self._max_skew, will=will)
        if problem:
            raise _Refused(problem)
        state.position.accept(stamp, will=will)

    def _status(self, agent: str, payload: bytes) -> None:
        state = self.agents[agent]
        text = payload.strip()
        if not text:
            return  # an empty payload just clears a retained topic
        try:
            if text in UNSIGNED:
                if self._secret is not None:
                    raise _Refused("unsigned")
                status, stamp = text.decode(), None
            else:
                data, stamp = self._decode(agent, "status", text)
                said = data.get("status")
                if said not in ("online", "offline"):
                    raise _Refused("malformed")
                status = str(said)
            self._in_order(state, stamp, will=status == "offline")
        except _Refused as refused:
            self.drop(refused.reason, agent)
            return
        if status == "online":
            self._alive(state)
            return
        # A broker that shuts down publishes every client's will, ours included; believe
        # the will only if our own link is still up a moment later.
        epoch, mark = self.link_epoch, state.alive_marks
        self._schedule(self._will_confirm, lambda: self._confirm_offline(agent, epoch, mark))

    def _alive(self, state: AgentState) -> None:
        state.offline = False
        state.alive_marks += 1

    def _confirm_offline(self, agent: str, epoch: int, mark: int) -> None:
        state = self.agents.get(agent)
        if state is None or not self.connected or epoch != self.link_epoch:
            return  # the agent is no longer configured, or our link changed since its will
        spoke = state.alive_marks != mark
        if spoke and self._secret is not None:
            return  # a signed message from a later connection: the agent is back
        # Unauthenticated, anyone can say "online": the will is confirmed by the node's other
        # probes whatever was said since, and only the mqtt probe's own state follows it.
        if not spoke:
            state.offline = True
        if self.on_offline is not None:
            self.on_offline(agent)

    def doubt(self, agent: str) -> None:
        """Forget an unsigned will the node's other probes contradicted: silence judges now."""
        state = self.agents.get(agent)
        if state is not None and self._secret is None:
            state.offline = False

    def _heartbeat(self, agent: str, payload: bytes) -> None:
        state = self.agents[agent]
        try:
            data, stamp = self._decode(agent, "heartbeat", payload)
            figures = _figures(data)
            if figures is None:
                raise _Refused("malformed")
            self._in_order(state, stamp, will=False)
        except _Refused as refused:
            self.drop(refused.reason, agent)
            return
        state.last_seen = self._clock.monotonic()
        state.last_wall = self._clock.wall()
        self._alive(state)
        state.figures = figures
        seq = data.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_COUNT:
            state.seq = seq
        else:
            state.seq += 1

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
        # Silence counts only up to the broker's latest answer: after it, the silent one may
        # be our own link (see ``link_confirmed``), and nodevigil's trouble judges no node.
        confirmed = self.connected_since if self.confirmed_at is None else self.confirmed_at
        if heard is None or heard < self.connected_since:
            # After our own (re)connect, agents get a grace period to be heard again.
            allowed = grace if grace is not None else silence_limit + AGENT_MAX_BACKOFF
            if since_link <= allowed:
                return None, "waiting for the first heartbeat since the broker link came up"
            if confirmed - self.connected_since <= allowed:
                return None, self._unconfirmed(f"no heartbeat for {since_link:.1f}s", now)
            return False, f"no heartbeat for {since_link:.1f}s"
        silence = now - heard
        if silence > silence_limit:
            said = f"no heartbeat for {silence:.1f}s (max {silence_limit:g}s)"
            if confirmed - heard <= silence_limit:
                return None, self._unconfirmed(said, now)
            return False, said
        assert state is not None
        over = _over_limits(spec, state.figures)
        if over:
            return False, over
        return True, f"heartbeat {silence:.1f}s ago"

    def _unconfirmed(self, said: str, now: float) -> str:
        """Why a silence is not judged: the broker has not answered us since it began."""
        quiet = now - (self.confirmed_at or now)
        return f"not judged: {said}, but the MQTT broker has not answered us for {quiet:.1f}s"


class _Refused(Exception):
    """A message to drop, with the reason it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        """Judge the agent's heartbeat; never decisive alone (the monitor confirms a will)."""
        ok, detail = self._board.judge(self.spec, self._agent, self._grace)
        return ok, detail, False


# The broker link lives in monitor.mqttlink; these names stay importable from here.
from monitor.mqttlink import HeartbeatListener, tls_parameters  # noqa: E402

__all__ = [
    "AgentState",
    "HeartbeatBoard",
    "HeartbeatListener",
    "MqttProber",
    "tls_parameters",
]
