"""Watch a key range through the gateway's streaming ``/v3/watch``, resuming across failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable

import aiohttp

from nodevigil.state.etcd.errors import EtcdCompacted, EtcdUnavailable
from nodevigil.state.etcd.transport import (
    INVALID_TOKEN,
    Json,
    Retry,
    Transport,
    b64,
    error_from,
)
from nodevigil.state.etcd.values import EventType, KeyValue, WatchEvent

log = logging.getLogger(__name__)


class StreamBroken(Exception):
    """The watch stream ended or went silent: reopen it after the last event seen."""


async def watch_events(
    transport: Transport,
    *,
    key: bytes,
    end: bytes,
    start_revision: int,
    idle_reconnect: float,
    decode: Callable[[Json], KeyValue],
) -> AsyncGenerator[WatchEvent]:
    """Yield every event in ``[key, end)`` from ``start_revision`` on (see EtcdClient.watch)."""
    next_revision = start_revision
    while True:
        request = {
            "create_request": {
                "key": b64(key),
                "range_end": b64(end),
                "start_revision": str(next_revision),
            }
        }
        stream = transport.stream("watch", request)
        try:
            while True:
                try:
                    async with asyncio.timeout(idle_reconnect):
                        message = await anext(stream)
                except TimeoutError as exc:
                    raise StreamBroken(f"silent for {idle_reconnect:g}s") from exc
                except StopAsyncIteration as exc:
                    raise StreamBroken("stream ended") from exc
                result = _result(message)
                if result.get("canceled") or int(result.get("compact_revision", 0)):
                    compacted = int(result.get("compact_revision", 0))
                    if compacted:
                        raise EtcdCompacted(
                            f"etcd: watch from revision {next_revision} is compacted "
                            f"(compacted up to {compacted})",
                            compact_revision=compacted,
                        )
                    reason = str(result.get("cancel_reason", ""))
                    if INVALID_TOKEN in reason:
                        # An expired login: etcd cancels the watch in a 200 answer, not with
                        # an error, so the reopen must log in again or it is refused for ever.
                        transport.forget_token(transport.current)
                    raise StreamBroken(f"canceled: {reason}")
                events = result.get("events", [])
                for raw in events:
                    kv = decode(raw["kv"])
                    kind = EventType.DELETE if raw.get("type") == "DELETE" else EventType.PUT
                    yield WatchEvent(kind, kv)
                    next_revision = kv.mod_revision + 1
        except EtcdUnavailable:
            raise  # no endpoint opened a watch within the timeout (it is a ConnectionError)
        except (StreamBroken, Retry, aiohttp.ClientError, OSError, ValueError) as exc:
            log.debug("etcd: watch reopens from revision %d: %s", next_revision, exc)
        finally:
            await stream.aclose()
        await asyncio.sleep(0.05)  # a member that cancels every new watch must not spin us


def _result(message: Json) -> Json:
    if "error" in message:
        raise error_from(message, 200, "watch")  # Retry reopens; EtcdRejected ends the watch
    result = message.get("result", {})
    return result if isinstance(result, dict) else {}
