"""Per-receiver token buckets: a burst is sent at the provider's pace instead of being throttled or dropped.

A delivery out of tokens *waits* for its token (it is never dropped): the bucket hands out reservations in
order, so waiting deliveries leave in the order they asked. Capacity is ``BURST_S`` seconds of the rate, so
a quiet receiver can still send a handful of messages at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

# Seconds of the rate a bucket holds when full (the burst a quiet receiver may send at once).
BURST_S = 5.0


class TokenBucket:
    """``rate_per_minute`` tokens per minute, at most ``capacity`` banked (default ``BURST_S`` of the rate)."""

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
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token now (possibly on credit) and return how many seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
            self._updated = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s

    async def acquire(self) -> float:
        """Wait for a token; returns the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        return delay


class RateLimits:
    """One bucket per receiver from ``settings.alerting.rate_limit_per_minute``; receivers not listed are free."""

    def __init__(self, per_minute: dict[str, float]) -> None:
        self.buckets = {name: TokenBucket(rate) for name, rate in per_minute.items() if rate > 0}

    async def acquire(self, receiver: str) -> float:
        bucket = self.buckets.get(receiver)
        return await bucket.acquire() if bucket else 0.0
