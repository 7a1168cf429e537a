"""How many failed password sign-ins the console takes, per user name and per client address.

Without a limit anyone who reaches the console can guess passwords as fast as Argon2 verifies them (~3 per
second per core). Failures are counted in a moving window (``limits``, in the console process's memory: one
Streamlit server serves every session); a sign-in over either limit is refused before the password is
checked, so the refusal says nothing about the password, and a right password does not get through either
until the window has moved on. Successful sign-ins are not counted: a person who signs in often is never held.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


@dataclass(frozen=True)
class Refusal:
    """Why a sign-in is not tried now, and when it may be."""

    what: str  # "user" or "address"
    retry_after_s: int

    def message(self) -> str:
        minutes = max(1, round(self.retry_after_s / 60))
        whose = "this user name" if self.what == "user" else "your address"
        return f"Too many failed sign-ins for {whose}: try again in about {minutes} minute(s), or ask an admin."


class SignInThrottle:
    """``check`` before verifying a password, ``failed`` after a wrong one."""

    def __init__(self, per_user: int, per_address: int, window_s: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._items = {
            "user": RateLimitItemPerSecond(per_user, window_s),
            "address": RateLimitItemPerSecond(per_address, window_s),
        }
        self._lock = threading.Lock()

    def _keys(self, user: str, address: str | None) -> dict[str, str]:
        keys = {"user": user.strip().lower()}
        if address:
            keys["address"] = address
        return keys

    def check(self, user: str, address: str | None) -> Refusal | None:
        """None when a sign-in may be tried; else which limit holds it and for how long."""
        with self._lock:
            for what, key in self._keys(user, address).items():
                item = self._items[what]
                if not self._limiter.test(item, "signin", what, key):
                    reset_at, _ = self._limiter.get_window_stats(item, "signin", what, key)
                    return Refusal(what, max(1, int(reset_at - time.time())))
        return None

    def failed(self, user: str, address: str | None) -> None:
        with self._lock:
            for what, key in self._keys(user, address).items():
                self._limiter.hit(self._items[what], "signin", what, key)


@functools.cache
def shared_throttle(per_user: int, per_address: int, window_s: int) -> SignInThrottle:
    """The Streamlit server process's throttle: every browser session signs in through it (a page script runs
    anew on every interaction, so it cannot hold one itself)."""
    return SignInThrottle(per_user, per_address, window_s)
