"""Per-receiver token buckets that pace a burst at the provider's rate, most urgent message first.

A delivery out of tokens *waits* for its token (it is never dropped). Waiting deliveries leave by
priority, then in the order they asked: a page about a critical alert does not queue behind a burst
of warnings or resolutions that reached the same receiver a moment earlier. Capacity is ``BURST_S``
seconds of the rate, so a quiet receiver can still send a handful of messages at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

# Seconds of the rate a bucket holds when full (the burst a quiet receiver may send at once).
BURST_S = 5.0

# Priorities (lower leaves first): what wakes someone up, then what they should know, then what is over.
PAGE, NOTICE, RESOLUTION = 0, 1, 2


def message_priority(status: str, severity: str | None) -> int:
    """A firing critical alert is a page; other firing alerts are notices; resolutions come last."""
    if status == "resolved":
        return RESOLUTION
    return PAGE if severity == "critical" else NOTICE


class TokenBucket:
    """``rate_per_minute`` tokens per minute, at most ``capacity`` banked (default ``BURST_S`` of the rate).

    Use from one event loop (the relay's)."""

    def __init__(
        self,
        rate_per_minute: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError(f"rate_per_minute must be positive, got {rate_per_minute}")
        self.rate_per_s = rate_per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, self.rate_per_s * BURST_S)
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._pacer: asyncio.Task[None] | None = None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def try_take(self) -> bool:
        """Take a token if one is banked and nobody is waiting for one."""
        self._refill()
        if self._waiting or self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    @property
    def waiting(self) -> int:
        return sum(not fut.done() for _, _, fut in self._waiting)

    async def acquire(self, priority: int = NOTICE) -> float:
        """Wait for a token (lower ``priority`` first, then first come); returns the seconds waited."""
        if self.try_take():
            return 0.0
        started = self._clock()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), future))
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.create_task(self._pace(), name="rate-limit-pacer")
        await future  # cancelled while waiting: the pacer skips it
        return self._clock() - started

    async def _pace(self) -> None:
        """Hand out tokens to the waiting deliveries as they accrue, most urgent first."""
        while self._waiting:
            if self._waiting[0][2].done():  # its delivery was cancelled
                heapq.heappop(self._waiting)
                continue
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                heapq.heappop(self._waiting)[2].set_result(None)
                continue
            await asyncio.sleep((1.0 - self._tokens) / self.rate_per_s)


class RateLimits:
    """One bucket per receiver from ``settings.alerting.rate_limit_per_minute``; receivers not listed are free."""

    def __init__(self, per_minute: dict[str, float]) -> None:
        self.buckets = {name: TokenBucket(rate) for name, rate in per_minute.items() if rate > 0}

    async def acquire(self, receiver: str, priority: int = NOTICE) -> float:
        bucket = self.buckets.get(receiver)
        return await bucket.acquire(priority) if bucket else 0.0
