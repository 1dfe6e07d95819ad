"""``POST /api/v1/replay``: what a candidate configuration would have done over the history.

Admin only (it is expensive). The body is ``{"config": "<candidate YAML>", "from": ...,
"to": ...}`` (``tolerance``, ``warmup`` optional), bounded by ``api.max_body``. The candidate is
validated here as ``check-config`` validates it (a 422 listing every problem); the history is
read through the daemon's own store (on the store's worker thread); the replay itself runs in
a child process of its own (``spawn``), one at a time, killed past ``REPLAY_TIMEOUT``: the
daemon's event loop never runs it, and its CPU is not the loop's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

from aiohttp import web

from monitor.history import HistoryStore, ProbeRun, RunRow, run_of_row, run_row
from nodevigil.app.api.app import CONTEXT, ApiError, json_body, require_admin
from nodevigil.app.api.params import check_keys
from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.app.replay.run import DEFAULT_WARMUP, Request, clip
from nodevigil.app.replay.window import MAX_SPAN, ReplayInputError, window
from nodevigil.core.config.load import parse_config
from nodevigil.core.config.schema import Config
from nodevigil.core.config.yamlfile import YamlProblem, parse_yaml
from nodevigil.core.durations import parse_duration
from nodevigil.core.errors import ConfigError

HISTORY = web.AppKey("replay_history", HistoryStore)
REPLAY_TIMEOUT = 300.0  # seconds a replay may compute before its process is killed
API_MAX_SPAN = 31 * 86400.0  # the API replays at most a month (the CLI: up to MAX_SPAN)


def routes() -> list[web.RouteDef]:
    """The replay route (one replay at a time per application)."""
    busy = asyncio.Lock()

    async def handler(request: web.Request) -> web.Response:
        return await replay(request, busy)

    return [web.post("/api/v1/replay", handler)]


async def replay(request: web.Request, busy: asyncio.Lock) -> web.Response:
    """Replay the candidate in the body against the running configuration; the differences."""
    require_admin(request)
    body = await json_body(request)
    check_keys(body, {"config", "from", "to", "tolerance", "warmup"})
    running = request.app[CONTEXT].config
    candidate = _candidate(body.get("config"), running)
    try:
        since, until = window(
            _text(body, "from", "-24h"), _text(body, "to", "now"), now=time.time()
        )
        tolerance = _seconds(body, "tolerance", 1.0)
        warmup = _seconds(body, "warmup", DEFAULT_WARMUP)
    except ReplayInputError as exc:  # well formed (the document's strings), not usable: 422
        raise ApiError(422, str(exc)) from None
    if until - since > min(API_MAX_SPAN, MAX_SPAN):
        raise ApiError(422, "the API replays at most 31 days; use `nodevigil replay` for more")
    if busy.locked():
        raise ApiError(409, "a replay is running; try again when it is done")
    async with busy:
        store = request.app[HISTORY]
        start = since - warmup
        runs = [c for r in await store.runs(start, until) if (c := clip(r, start)) is not None]
        job = Request(candidate, running, since, until, warmup=warmup, tolerance=tolerance)
        data = await run_in_process(job, runs, REPLAY_TIMEOUT)
    return web.json_response(data)


def _candidate(raw: Any, running: Config) -> Config:
    if not isinstance(raw, str):
        raise ApiError(400, "config: give the candidate configuration as YAML text")
    if not raw.strip():
        raise ApiError(422, "config: the candidate configuration is empty")
    try:
        data = parse_yaml(raw)
        # As check-config reads a file beside the running one (secrets are not needed).
        return parse_config(
            data, source="candidate", base_dir=None, event_kinds=EVENT_KINDS, secrets=False
        )
    except YamlProblem as exc:
        raise ApiError(422, f"config: {exc}") from None
    except ConfigError as exc:
        problems = "; ".join(exc.problems or ["invalid configuration"])
        raise ApiError(422, f"config: {problems}") from None


def _text(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise ApiError(400, f"{key}: give an RFC 3339 time, seconds since the epoch or -24h")
    return value


def _seconds(body: dict[str, Any], key: str, default: float) -> float:
    raw = body.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise ApiError(400, f"{key}: give a duration such as '1s' or '10m'")
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise ApiError(400, f"{key}: {exc}") from None
    if value > 86400:
        raise ApiError(422, f"{key}: at most 1d")
    return value


async def run_in_process(job: Request, runs: list[ProbeRun], limit: float) -> dict[str, Any]:
    """The comparison, computed in a child process; a 503 when it outlives ``limit``."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=_child, args=(child,), name="nodevigil-replay", daemon=True)
    process.start()
    child.close()
    try:
        rows: list[RunRow] = [run_row(r) for r in runs]
        await asyncio.to_thread(parent.send, (job, rows))
        ready = await asyncio.to_thread(parent.poll, limit)
        if not ready:
            raise ApiError(503, f"the replay took longer than {limit:g}s and was stopped")
        try:
            ok, answer = await asyncio.to_thread(parent.recv)
        except EOFError:
            raise ApiError(503, "the replay process ended without an answer") from None
        if not ok:
            raise ApiError(503, f"the replay failed: {answer}")
        result: dict[str, Any] = answer
        return result
    finally:
        parent.close()
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 5.0)


def _child(conn: Connection) -> None:
    """The child process: receive the job, replay, send ``(ok, data or error)``."""
    from nodevigil.app.replay.run import compare

    try:
        job, rows = conn.recv()
        store = _Runs([run_of_row(row) for row in rows])
        data = asyncio.run(compare(store, job))
        conn.send((True, data))
    except Exception as exc:  # reported to the route, which answers 500 with it
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class _Runs:
    """The runs the daemon read, as a read-only ``HistoryStore`` for ``compare``."""

    def __init__(self, runs: list[ProbeRun]) -> None:
        self._runs = runs

    async def save(self, runs: Any) -> None:
        """Never called: a replay writes nothing."""
        raise NotImplementedError("a replay writes no history")

    async def runs(self, since: float, until: float, nodes: Any = None) -> list[ProbeRun]:
        """The runs given (already the window's, ordered by first)."""
        return [r for r in self._runs if r.last >= since and r.first <= until]

    async def prune(self, before: float) -> int:
        """Never called: a replay prunes nothing."""
        raise NotImplementedError("a replay prunes no history")
