"""A steady trickle of HTTP requests through a site's load balancer, counted honestly."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp

PAUSE = 0.01  # seconds between requests: about 50-80 a second on loopback
REQUEST_LIMIT = 2.0  # seconds one request may take before it counts as failed


class LoadLoop:
    """Sends GET requests one after another until stopped; counts answers and failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered_by: Counter[str] = Counter()  # the node name each 200 came from
        self.failures: Counter[str] = Counter()  # what went wrong, e.g. "503" or "timeout"
        self._task: asyncio.Task[None] | None = None

    @property
    def sent(self) -> int:
        """Requests completed so far (answered or failed)."""
        return sum(self.answered_by.values()) + sum(self.failures.values())

    @property
    def failed(self) -> int:
        """Requests that did not get a 200."""
        return sum(self.failures.values())

    def start(self) -> None:
        """Begin sending."""
        self._task = asyncio.create_task(self._run(), name=f"load {self.url}")

    async def stop(self) -> None:
        """Stop sending (the request in flight is abandoned, not counted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_LIMIT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    async with http.get(self.url) as response:
                        body = await response.text()
                        if response.status == 200:
                            self.answered_by[body.strip()] += 1
                        else:
                            self.failures[str(response.status)] += 1
                except TimeoutError:
                    self.failures["timeout"] += 1
                except aiohttp.ClientError as exc:
                    self.failures[type(exc).__name__] += 1
                await asyncio.sleep(PAUSE)
