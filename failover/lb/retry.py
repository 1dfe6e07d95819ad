"""Bounded, jittered retries of load-balancer calls, only on transient trouble."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from failover.lb.errors import LoadBalancerUnavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a call towards a load balancer is retried."""

    attempts: int = 3
    total: float = 5.0
    initial: float = 0.05
    maximum: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.total <= 0 or self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("total and initial must be positive, maximum at least initial")


NO_RETRY = RetryPolicy(attempts=1)


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``call()``, retrying on LoadBalancerUnavailable; the last error is re-raised."""
    if policy.attempts == 1:
        return await call()
    retrying = AsyncRetrying(
        # Only unreachable/timed-out calls are retried: "no such server" or BADSIG never heal.
        retry=retry_if_exception_type(LoadBalancerUnavailable),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total),
        wait=wait_random_exponential(multiplier=policy.initial, max=policy.maximum),
        sleep=sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
