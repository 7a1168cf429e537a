"""Delivery bookkeeping without the network: Retry-After, backoff bounds, token buckets, outbox rules."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from tenacity import AsyncRetrying, Future, RetryCallState

from alerting.payload import Alert
from alerting.ratelimit import NOTICE, PAGE, RESOLUTION, TokenBucket, message_priority
from alerting.retry import (
    DeliveryError,
    delivery_retrying,
    parse_retry_after,
    retryable_status,
    wait_retry_after_or_jitter,
)
from alerting.store import DEAD, DELIVERED, PENDING, NewDelivery, Store

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("1.5", 1.5), (" 0 ", 0.0), ("-4", 0.0), (None, None), ("", None), ("soon", None)],
)
def test_retry_after_in_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_retry_after_as_http_date() -> None:
    moment = datetime.fromtimestamp(NOW, tz=UTC) + timedelta(seconds=10)
    assert parse_retry_after(format_datetime(moment, usegmt=True), now=NOW) == pytest.approx(10.0)
    past = datetime.fromtimestamp(NOW, tz=UTC) - timedelta(seconds=10)
    assert parse_retry_after(format_datetime(past, usegmt=True), now=NOW) == 0.0


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (500, True),
        (502, True),
        (503, True),
        (429, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
    ],
)
def test_only_5xx_and_429_are_retried(status: int, retry: bool) -> None:
    assert retryable_status(status) is retry


def state_after(attempt: int, error: BaseException) -> RetryCallState:
    state = RetryCallState(retry_object=AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.outcome = Future.construct(attempt, error, True)
    return state


def test_retry_after_replaces_the_backoff_and_is_capped() -> None:
    wait = wait_retry_after_or_jitter(initial_s=0.5, max_s=30.0)
    assert wait(state_after(1, DeliveryError("429", retryable=True, retry_after=7.0))) == 7.0
    assert wait(state_after(1, DeliveryError("429", retryable=True, retry_after=3600.0))) == 30.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 12])
def test_backoff_is_full_jitter_within_exponential_bounds(attempt: int) -> None:
    wait = wait_retry_after_or_jitter(initial_s=0.5, max_s=30.0)
    bound = min(30.0, 0.5 * 2 ** (attempt - 1))
    samples = [wait(state_after(attempt, DeliveryError("500", retryable=True))) for _ in range(400)]
    assert all(0.0 <= s <= bound for s in samples)
    # Full jitter: waits spread over the whole window, not clustered near its top.
    assert min(samples) < bound * 0.1 and max(samples) > bound * 0.9


def test_retrying_stops_at_once_on_a_permanent_error_and_after_the_budget_otherwise() -> None:
    async def run(errors: list[DeliveryError | None], attempts: int) -> tuple[int, BaseException | None]:
        calls = 0
        try:
            async for attempt in delivery_retrying(attempts, initial_s=0.001, max_s=0.002):
                with attempt:
                    error = errors[calls]
                    calls += 1
                    if error is not None:
                        raise error
        except DeliveryError as exc:
            return calls, exc
        return calls, None

    server_error = DeliveryError("500", retryable=True, status=500)
    assert asyncio.run(run([server_error, server_error, None], attempts=5)) == (3, None)
    bad_request = DeliveryError("400", retryable=False, status=400)
    assert asyncio.run(run([bad_request, None], attempts=5)) == (1, bad_request)
    assert asyncio.run(run([server_error] * 3, attempts=3)) == (3, server_error)


def test_token_bucket_makes_a_burst_wait_instead_of_dropping_it() -> None:
    async def run() -> list[float]:
        bucket = TokenBucket(rate_per_minute=600.0, capacity=2.0)  # 10 tokens/s, 2 banked
        waits = await asyncio.gather(*(bucket.acquire() for _ in range(5)))
        return list(waits)

    waits = asyncio.run(run())
    # Two banked tokens go at once; the other three wait their turn 0.1 s apart (600/min); none is refused.
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.1, 0.2, 0.3], abs=0.05)


def test_token_bucket_lets_a_page_jump_the_queue_of_notices_and_resolutions() -> None:
    async def run() -> list[str]:
        bucket = TokenBucket(rate_per_minute=1200.0, capacity=1.0)  # one banked token, then one per 50 ms
        released: list[str] = []

        async def deliver(name: str, priority: int) -> None:
            await bucket.acquire(priority)
            released.append(name)

        first = asyncio.create_task(deliver("warning-0", NOTICE))  # takes the banked token
        await asyncio.sleep(0)
        queued = [asyncio.create_task(deliver(f"resolved-{i}", RESOLUTION)) for i in range(2)]
        queued += [asyncio.create_task(deliver(f"warning-{i}", NOTICE)) for i in (1, 2)]
        await asyncio.sleep(0)
        queued.append(asyncio.create_task(deliver("critical", PAGE)))  # asked last
        await asyncio.gather(first, *queued)
        return released

    assert asyncio.run(run()) == ["warning-0", "critical", "warning-1", "warning-2", "resolved-0", "resolved-1"]


def test_a_cancelled_wait_gives_its_turn_to_the_next() -> None:
    async def run() -> float:
        bucket = TokenBucket(rate_per_minute=1200.0, capacity=1.0)
        assert bucket.try_take()
        doomed = asyncio.create_task(bucket.acquire(PAGE))
        await asyncio.sleep(0)
        doomed.cancel()
        waited = await bucket.acquire(NOTICE)
        assert bucket.waiting == 0
        return waited

    assert asyncio.run(run()) == pytest.approx(0.05, abs=0.04)


@pytest.mark.parametrize(
    ("status", "severity", "priority"),
    [
        ("firing", "critical", PAGE),
        ("firing", "warning", NOTICE),
        ("firing", "", NOTICE),
        ("resolved", "critical", RESOLUTION),
    ],
)
def test_message_priority(status: str, severity: str, priority: int) -> None:
    assert message_priority(status, severity) == priority


def test_token_bucket_rejects_a_nonsense_rate() -> None:
    with pytest.raises(ValueError, match="rate_per_minute must be positive"):
        TokenBucket(0)


# -- outbox rules -----------------------------------------------------------------------------------------


def alert(status: str, fingerprint: str = "fp1", started: str = "2026-03-02T08:15:00Z") -> Alert:
    return Alert.model_validate(
        {
            "status": status,
            "labels": {"alertname": "VigilAnomaly", "equipment_id": "pump-1", "site": "site-1"},
            "startsAt": started,
            "endsAt": "2026-03-02T08:20:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
            "fingerprint": fingerprint,
        }
    )


def test_outbox_queues_each_alert_status_and_recipient_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "relay.db")
    firing = [
        NewDelivery("sms", "alice", "+15550000001", alert("firing")),
        NewDelivery("sms", "bob", "+15550000002", alert("firing")),
    ]
    assert len(store.enqueue(firing).queued) == 2
    again = store.enqueue(firing)  # Alertmanager re-sending the group
    assert (again.queued, again.duplicates) == ([], 2)
    # A new occurrence of the same alert (new startsAt) is a new page.
    later = store.enqueue(
        [NewDelivery("sms", "alice", "+15550000001", alert("firing", started="2026-03-02T09:00:00Z"))]
    )
    assert len(later.queued) == 1
    assert len(store.find("fp1")) == 3


def test_resolved_goes_only_to_who_got_the_firing_and_never_overtakes_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "relay.db")
    (firing_id,) = store.enqueue([NewDelivery("slack", "#a", "#a", alert("firing"))]).queued
    result = store.enqueue(
        [NewDelivery("slack", "#a", "#a", alert("resolved")), NewDelivery("slack", "#b", "#b", alert("resolved"))]
    )
    assert len(result.queued) == 1 and result.unannounced == 1  # #b never heard it started
    (resolved_id,) = result.queued
    assert [d.id for d in store.due("slack", 10)] == [firing_id]  # resolved held back while firing is pending
    store.record_attempt(firing_id, 1, "retry", status=500, error="HTTP 500")
    assert [d.id for d in store.due("slack", 10)] == [firing_id]
    store.record_attempt(firing_id, 2, "delivered", status=200)
    assert [d.id for d in store.due("slack", 10)] == [resolved_id]
    assert store.get([firing_id])[0].state == DELIVERED


def test_dead_letters_keep_their_reason_and_resend_gives_a_fresh_budget(tmp_path: Path) -> None:
    store = Store(tmp_path / "relay.db")
    (delivery_id,) = store.enqueue([NewDelivery("email", "ops", "ops@example.com", alert("firing"))]).queued
    store.record_attempt(delivery_id, 1, "dead_letter", status=550, error="550 no such user", reason="rejected")
    (dead,) = store.dead_letters()
    assert (dead.id, dead.state, dead.attempts, dead.reason, dead.last_error) == (
        delivery_id,
        DEAD,
        1,
        "rejected",
        "550 no such user",
    )
    assert store.due("email", 10) == []
    assert store.resend([delivery_id, 999]) == [delivery_id]
    (again,) = store.get([delivery_id])
    assert (again.state, again.attempts, again.reason) == (PENDING, 0, None)
    assert store.dead_letters() == []
    assert [a.outcome for a in store.unshipped_attempts(10)] == ["dead_letter"]
