"""When a failed delivery is tried again: tenacity with full-jitter exponential backoff and Retry-After.

Retryable: timeouts, connection errors, HTTP 5xx and 429 (and SMTP 4xx / dropped connections). Anything else
(a 4xx such as 400 invalid payload, 401 bad credentials, 404 unknown channel) will fail the same way every
time, so it is dead-lettered at once with its reason instead of burning the attempts. A server's
Retry-After (seconds or an HTTP date) on 429/503 replaces the jittered wait, capped at ``backoff_max_s``.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

RETRY_AFTER_STATUSES = frozenset({429, 503})


class DeliveryError(Exception):
    """One failed delivery attempt: why, whether trying again can help, and what the server said."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status  # HTTP status, or the SMTP reply code for e-mail
        self.retry_after = retry_after  # seconds the server asked us to wait


def retryable_status(status: int) -> bool:
    """5xx and 429 may succeed later; any other 4xx is the request's own fault."""
    return status >= 500 or status == 429


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class wait_retry_after_or_jitter(wait_base):  # noqa: N801 -- tenacity's naming convention
    """The server's Retry-After if it sent one (capped), else exponential backoff with full jitter."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.max_s = max_s
        self.jitter = wait_random_exponential(multiplier=initial_s, max=max_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_s)
        return self.jitter(retry_state)


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, DeliveryError) and error.retryable


def delivery_retrying(attempts: int, initial_s: float, max_s: float) -> AsyncRetrying:
    """At most ``attempts`` tries; the last error is re-raised (a :class:`DeliveryError`)."""
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_retry_after_or_jitter(initial_s, max_s),
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )
