"""The notification relay server: Alertmanager webhooks in, Slack / SMS / e-mail out.

``POST /alertmanager/{receiver}`` validates the webhook (422 with the reason when it is not one), routes each
alert to the receiver's on-call recipients and commits one outbox row per (alert, status, recipient) before it
answers 200, so Alertmanager only stops retrying once nothing can be lost. Re-sent alerts hit their
idempotency key and are counted, not queued. The new alerts of one webhook for one recipient form a batch that
goes out as ONE message (Alertmanager's grouping is kept: a fault storm at a site is one page, and a machine
whose threshold and rate-of-change rules fire together pages once, not twice). One worker per receiver
delivers from the outbox with up to ``MAX_IN_FLIGHT`` messages at a time, so a slow SMS provider never holds
Slack back; each message is tried
with tenacity (full-jitter backoff, Retry-After honoured) under the receiver's token bucket, and ends
delivered or as a dead letter with its reason. ``GET /healthz`` answers with the queue; ``GET /metrics`` is
Prometheus.

Run: ``python -m alerting.relay`` (on ``settings.alerting.relay_host:relay_port``, until SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from alerting import RECEIVERS
from alerting.delivery_log import DeliveryLog
from alerting.diagnoses import follow_up_alert, parse_insights, with_diagnoses
from alerting.messages import MessageContext, email_group_message, slack_group_message, sms_group_text
from alerting.oncall import OnCall, OnCallConfigError, load_oncall
from alerting.payload import InvalidWebhook, WebhookPayload, parse_webhook
from alerting.ratelimit import RateLimits, message_priority
from alerting.retry import DeliveryError, delivery_retrying
from alerting.senders import EmailSender, SlackApiSender, SlackSender, SmsSender, read_secret
from alerting.store import DEAD, DELIVERED, Delivery, EnqueueResult, FollowUp, NewDelivery, Store
from alerting.threads import plan_message, worst_severity
from alerting.webhook_auth import TokenFileError, authorized, ensure_token
from connectors.kafka import consume_batches, make_consumer
from vigil.logs import setup_logging
from vigil.settings import Settings, get_settings

log = logging.getLogger(__name__)

POLL_S = 1.0  # a worker looks for due deliveries at least this often (resends from the CLI, restarts)
MAX_IN_FLIGHT = 8  # messages one receiver delivers concurrently
MAX_BATCH = 25  # alerts in one message at most (a bigger batch becomes several messages)
HOUSEKEEPING_S = 1.0  # gauges and delivery-log shipping
PRUNE_EVERY_S = 3600.0
ERROR_MAX_CHARS = 1000
FOLLOW_UP_POLL_S = 1.0  # how often the relay looks for paged recipients a new diagnosis has not reached
PARK_S = 30.0  # a delivery that crashed (not a DeliveryError: e.g. the outbox failed) waits this long to rerun


class RelayMetrics:
    """The relay's Prometheus metrics, in their own registry (several relays may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "vigil_notify_webhooks", "Alertmanager webhooks received, by outcome", ["receiver", "outcome"], registry=r
        )
        self.delivered = Counter("vigil_notify_delivered", "Messages delivered", ["receiver"], registry=r)
        self.failed = Counter(
            "vigil_notify_failed_attempts",
            "Delivery attempts that failed (retried or dead-lettered)",
            ["receiver"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "vigil_notify_dead_lettered", "Messages that became dead letters", ["receiver"], registry=r
        )
        self.deduplicated = Counter(
            "vigil_notify_deduplicated",
            "Alerts re-sent by Alertmanager that were already queued or delivered (nobody paged twice)",
            ["receiver"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "vigil_notify_queue_depth", "Messages waiting to be delivered or retried", ["receiver"], registry=r
        )
        self.dead_letters = Gauge(
            "vigil_notify_dead_letters", "Dead letters waiting for `vigil alerts resend`", registry=r
        )
        self.attempt_seconds = Histogram(
            "vigil_notify_attempt_seconds", "Duration of one delivery attempt", ["receiver"], registry=r
        )
        for receiver in RECEIVERS:  # every series exists from the start (rate() and absent() need them)
            for metric in (self.delivered, self.failed, self.dead_lettered, self.deduplicated, self.queue_depth):
                metric.labels(receiver)


class Deliverer:
    """Delivers one outbox row: render, rate-limit, send, retry, record each attempt; ends delivered or dead."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        oncall: OnCall,
        client: httpx.AsyncClient,
        metrics: RelayMetrics,
        limits: RateLimits,
    ) -> None:
        self.settings = settings
        self.store = store
        self.oncall = oncall
        self.metrics = metrics
        self.limits = limits
        self.slack = SlackSender(client)
        self.slack_api = SlackApiSender(client, settings.alerting)
        self.sms = SmsSender(client, settings.alerting)
        self.email = EmailSender(settings.alerting)

    def _slack_url(self, recipient: str) -> str:
        config = self.oncall.recipient("slack", recipient)
        env = getattr(config, "webhook_url_env", None)
        if env:
            if url := os.environ.get(env):
                return url
            raise DeliveryError(
                f"environment variable {env} (webhook of Slack channel {recipient!r}) is not set", retryable=False
            )
        a = self.settings.alerting
        if url := read_secret(a.slack_webhook_url, a.slack_webhook_url_file):
            return url
        raise DeliveryError(
            "Slack is not configured: set VIGIL_ALERTING__SLACK_WEBHOOK_URL "
            "(or VIGIL_ALERTING__SLACK_WEBHOOK_URL_FILE)",
            retryable=False,
        )

    async def _send_once(self, rows: Sequence[Delivery]) -> int:
        a = self.settings.alerting
        lead = rows[0]
        alerts = [row.alert() for row in rows]
        # The agents' diagnosis, when known by now, goes into the message itself.
        if a.insight_followups and (found := await asyncio.to_thread(self.store.diagnoses_for, alerts)):
            alerts = with_diagnoses(alerts, found)
            await asyncio.to_thread(self.store.mark_told, lead.receiver, lead.recipient, list(found.values()))
        ctx = MessageContext(console_url=a.console_url, sms_max_chars=a.sms_max_chars, external_url=lead.external_url)
        if lead.receiver == "slack":
            payload = slack_group_message(alerts, ctx)
            if self.slack_api.token():
                return await self._send_slack_api(rows, payload)
            return await self.slack.send(self._slack_url(lead.recipient), payload)
        if lead.receiver == "sms":
            return await self.sms.send(lead.address, sms_group_text(alerts, ctx))
        if lead.receiver == "email":
            message = email_group_message(alerts, ctx, a.email_from, lead.address, [row.story_key for row in rows])
            return await self.email.send(message)
        raise DeliveryError(f"unknown receiver {lead.receiver!r} (known: {', '.join(RECEIVERS)})", retryable=False)

    async def _send_slack_api(self, rows: Sequence[Delivery], payload: dict[str, Any]) -> int:
        """Post with the Web API, as a new message or a reply in the machine's thread (alerting.threads)."""
        lead = rows[0]
        config = self.oncall.recipient("slack", lead.recipient)
        channel = getattr(config, "channel", None) or lead.recipient
        machines = sorted({r.equipment_id for r in rows if r.equipment_id})
        threads = await asyncio.to_thread(self.store.slack_threads, lead.recipient, machines)
        plan = plan_message(rows, threads, time.time(), self.settings.alerting.slack_thread_reuse_s)
        thread = plan.thread
        try:
            posted = await self.slack_api.send(
                thread.channel if thread else channel, payload, thread.ts if thread else None, plan.broadcast
            )
        except DeliveryError as exc:
            if thread is None or "thread_not_found" not in str(exc):
                raise
            # The parent is gone (deleted, or another workspace): the message stands on its own instead.
            log.warning("slack: thread %s of %s is gone; posting to the channel", thread.ts, lead.recipient)
            thread = None
            posted = await self.slack_api.send(channel, payload)
            if lead.alert_status == "firing":
                plan = dataclasses.replace(plan, opens=tuple(machines))
        worst = worst_severity(rows)
        if thread is not None:
            await asyncio.to_thread(self.store.touch_slack_thread, lead.recipient, thread, worst)
        elif plan.opens and posted.ts:
            await asyncio.to_thread(
                self.store.open_slack_thread, lead.recipient, list(plan.opens), posted.channel, posted.ts, worst
            )
        return posted.status

    async def deliver(self, rows: Sequence[Delivery]) -> str:
        """Send ``rows`` (one recipient's batch) as one message until delivered or dead; returns the final state.

        Every row records the same attempts. Cancelling leaves them pending."""
        a = self.settings.alerting
        # Rows resumed after a crash keep the attempts they used; they always get at least one more.
        used = max(row.attempts for row in rows)
        last_attempt = max(a.max_attempts, used + 1)
        attempt_no = used
        lead = rows[0]
        priority = min(message_priority(row.alert_status, row.severity) for row in rows)
        try:
            async for attempt in delivery_retrying(last_attempt - used, a.backoff_initial_s, a.backoff_max_s):
                with attempt:
                    await self.limits.acquire(lead.receiver, priority)
                    attempt_no += 1
                    started = time.monotonic()
                    try:
                        status = await self._send_once(rows)
                    except DeliveryError as exc:
                        await self._failed(rows, attempt_no, last_attempt, exc, started)
                        raise
                    except Exception as exc:  # a bug (e.g. rendering): dead-letter it rather than loop
                        error = DeliveryError(f"internal error: {type(exc).__name__}: {exc}", retryable=False)
                        log.exception("cannot deliver %s #%s", lead.receiver, _ids(rows))
                        await self._failed(rows, attempt_no, last_attempt, error, started)
                        raise error from exc
                    latency_ms = (time.monotonic() - started) * 1000
                    for row in rows:
                        await asyncio.to_thread(
                            self.store.record_attempt,
                            row.id,
                            attempt_no,
                            "delivered",
                            status=status,
                            latency_ms=latency_ms,
                        )
                    self.metrics.delivered.labels(lead.receiver).inc()
                    self.metrics.attempt_seconds.labels(lead.receiver).observe(latency_ms / 1000)
                    log.info(
                        "%s: delivered %s %s of %s to %s (%d alert%s, attempt %d, %.0f ms)",
                        lead.receiver,
                        lead.alert_status,
                        lead.alertname,
                        lead.equipment_id or lead.site or "-",
                        lead.recipient,
                        len(rows),
                        "s" if len(rows) > 1 else "",
                        attempt_no,
                        latency_ms,
                    )
        except DeliveryError:
            return DEAD
        return DELIVERED

    async def _failed(
        self, rows: Sequence[Delivery], attempt_no: int, last: int, exc: DeliveryError, started: float
    ) -> None:
        latency_ms = (time.monotonic() - started) * 1000
        error = str(exc)[:ERROR_MAX_CHARS]
        final = not exc.retryable or attempt_no >= last
        reason = None
        if final:
            reason = (
                f"gave up after {attempt_no} attempts: {error}" if exc.retryable else f"rejected, not retried: {error}"
            )
        for row in rows:
            await asyncio.to_thread(
                self.store.record_attempt,
                row.id,
                attempt_no,
                "dead_letter" if final else "retry",
                status=exc.status,
                error=error,
                latency_ms=latency_ms,
                reason=reason,
            )
        lead = rows[0]
        self.metrics.failed.labels(lead.receiver).inc()
        self.metrics.attempt_seconds.labels(lead.receiver).observe(latency_ms / 1000)
        ids = _ids(rows)
        if final:
            self.metrics.dead_lettered.labels(lead.receiver).inc()
            log.error(
                "%s: dead letter #%s (%s %s to %s): %s -- `vigil alerts resend %s` once fixed",
                lead.receiver,
                ids,
                lead.alert_status,
                lead.alertname,
                lead.recipient,
                reason,
                ids.replace(",", " "),
            )
        else:
            log.warning(
                "%s: attempt %d/%d of #%s to %s failed, retrying: %s",
                lead.receiver,
                attempt_no,
                last,
                ids,
                lead.recipient,
                error,
            )


def _ids(rows: Sequence[Delivery]) -> str:
    return ",".join(str(row.id) for row in rows)


def batches(rows: Sequence[Delivery], limit: int | None = None) -> list[list[Delivery]]:
    """Rows grouped into messages: same ``batch_key`` (a row without one is alone), at most ``MAX_BATCH`` each,
    in the order of their first row; at most ``limit`` messages."""
    groups: dict[tuple[str | int, int], list[Delivery]] = {}
    chunk: dict[str | int, int] = {}  # key -> index of its open (not yet full) message
    for row in rows:
        key: str | int = row.batch_key or row.id
        part = chunk.setdefault(key, 0)
        if len(groups.get((key, part), ())) >= MAX_BATCH:
            part = chunk[key] = part + 1
        groups.setdefault((key, part), []).append(row)
    out = list(groups.values())
    return out if limit is None else out[:limit]


class Relay:
    """The relay's state and workers; :func:`create_app` serves it over HTTP."""

    def __init__(self, settings: Settings, oncall: OnCall | None = None) -> None:
        self.settings = settings
        self.oncall = oncall or load_oncall(settings.alerting.receivers_path)
        self.store = Store(settings.alerting_state_path)
        self.metrics = RelayMetrics()
        self.delivery_log = DeliveryLog(settings, self.store)
        self.limits = RateLimits(settings.alerting.rate_limit_per_minute)
        self.in_flight: dict[str, dict[int, asyncio.Task[str]]] = {r: {} for r in RECEIVERS}
        self._parked: dict[str, dict[int, float]] = {r: {} for r in RECEIVERS}  # id -> monotonic time it may run
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.deliverer: Deliverer | None = None
        self._feed_stop = threading.Event()
        self._feed: threading.Thread | None = None
        self._warn_unconfigured()

    def _warn_unconfigured(self) -> None:
        a = self.settings.alerting
        missing = {
            "slack": not (a.slack_webhook_url or a.slack_webhook_url_file),
            "sms": not (a.sms_account_sid and (a.sms_auth_token or a.sms_auth_token_file) and a.sms_from),
            "email": not a.smtp_host,
        }
        for receiver, unset in missing.items():
            if unset and self.oncall.receiver(receiver).recipients:
                log.warning(
                    "%s has recipients in %s but is not configured: its messages will become dead letters "
                    "(see VIGIL_ALERTING__* settings)",
                    receiver,
                    self.oncall.source,
                )

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.settings.alerting.request_timeout_s)
        self.deliverer = Deliverer(self.settings, self.store, self.oncall, self._client, self.metrics, self.limits)
        self._wake = {r: asyncio.Event() for r in RECEIVERS}
        self._tasks = [asyncio.create_task(self._worker(r), name=f"notify-{r}") for r in RECEIVERS]
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="notify-housekeeping"))
        if self.settings.alerting.insight_followups:
            self._tasks.append(asyncio.create_task(self._follow_up_loop(), name="notify-follow-ups"))
            self._feed_stop.clear()
            self._feed = threading.Thread(target=self._read_insights, name="notify-insights", daemon=True)
            self._feed.start()
        depth = await asyncio.to_thread(self.store.queue_depth)
        log.info(
            "relay started: state %s, on-call %s, %d messages to resume %s",
            self.store.path,
            self.oncall.source,
            sum(depth.values()),
            depth or "",
        )

    async def stop(self) -> None:
        """Stop delivering (interrupted messages stay pending and resume on the next start)."""
        tasks = [*self._tasks, *(t for flights in self.in_flight.values() for t in flights.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feed_stop.set()
        if self._feed is not None:
            await asyncio.to_thread(self._feed.join, 10.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(self.delivery_log.flush), timeout=5.0)
        self.delivery_log.close()
        if self._client is not None:
            await self._client.aclose()
        self.store.close()

    # -- intake ------------------------------------------------------------------------------------
    async def accept(self, receiver: str, payload: WebhookPayload) -> tuple[EnqueueResult, int]:
        """Route and durably queue a webhook's alerts; returns the enqueue result and alerts nobody gets.

        A recipient's new alerts of one status form one batch (one message)."""
        config = self.oncall.receiver(receiver)
        items: list[NewDelivery] = []
        not_routed = 0
        webhook_id = uuid.uuid4().hex
        for alert in payload.alerts:
            if alert.status == "resolved" and not config.send_resolved:
                continue
            recipients = self.oncall.route(receiver, alert.labels)
            not_routed += not recipients
            items += [
                NewDelivery(
                    receiver,
                    r.name,
                    r.address,
                    alert,
                    payload.externalURL,
                    batch_key=f"{webhook_id}/{r.name}/{alert.status}",
                )
                for r in recipients
            ]
        result = await asyncio.to_thread(self.store.enqueue, items)
        self.metrics.deduplicated.labels(receiver).inc(result.duplicates)
        if result.queued and receiver in self._wake:
            self._wake[receiver].set()
        return result, not_routed

    # -- workers -----------------------------------------------------------------------------------
    async def _worker(self, receiver: str) -> None:
        wake, flights = self._wake[receiver], self.in_flight[receiver]
        assert self.deliverer is not None
        while True:
            try:
                free = MAX_IN_FLIGHT - len(set(flights.values()))
                now = time.monotonic()
                parked = self._parked[receiver]
                for delivery_id in [i for i, until in parked.items() if until <= now]:
                    del parked[delivery_id]
                skip = frozenset(flights) | frozenset(parked)
                rows = await asyncio.to_thread(self.store.due, receiver, free * MAX_BATCH, skip) if free > 0 else []
                for batch in batches(rows, free):
                    name = f"notify-{receiver}-{batch[0].id}"
                    task = asyncio.create_task(self.deliverer.deliver(batch), name=name)
                    for row in batch:
                        flights[row.id] = task
                    task.add_done_callback(lambda t, ids=[r.id for r in batch]: self._finished(receiver, ids, t))
            except sqlite3.Error as exc:
                log.error("%s worker cannot read the outbox %s: %s", receiver, self.store.path, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_S)
            wake.clear()

    def _finished(self, receiver: str, ids: list[int], task: asyncio.Task[str]) -> None:
        for delivery_id in ids:
            self.in_flight[receiver].pop(delivery_id, None)
        if not task.cancelled() and task.exception() is not None:
            # Not retried at once: if the message went out but recording it failed, a hot loop would re-send it.
            for delivery_id in ids:
                self._parked[receiver][delivery_id] = time.monotonic() + PARK_S
            log.error(
                "%s delivery #%s failed unexpectedly (stays pending, retried in %.0f s): %r",
                receiver,
                ",".join(map(str, ids)),
                PARK_S,
                task.exception(),
            )
        self._wake[receiver].set()  # a slot is free, and a held-back resolved message may now go

    # -- agent diagnoses ----------------------------------------------------------------------------
    def _read_insights(self) -> None:
        """Thread: insights topic -> diagnoses in the store; offsets committed after they are stored."""
        a, kafka = self.settings.alerting, self.settings.kafka.as_identity("alerting")
        consumer = make_consumer(kafka, a.insights_consumer_group)
        try:
            for messages in consume_batches(consumer, [kafka.insights_topic], self._feed_stop, timeout_s=0.5):
                if not messages:
                    continue
                diagnoses, bad = parse_insights(m.value() or b"" for m in messages)
                while not self._feed_stop.is_set():
                    try:
                        self.store.save_diagnoses(diagnoses, a.diagnosis_margin_s)
                        break
                    except sqlite3.Error as exc:
                        log.error(
                            "cannot store %d diagnoses in %s (retrying): %s", len(diagnoses), self.store.path, exc
                        )
                        self._feed_stop.wait(1.0)
                else:
                    return  # stopping: not committed, re-read on the next start
                if bad:
                    log.warning("skipped %d unreadable records on %s", bad, kafka.insights_topic)
                consumer.commit(asynchronous=False)
        except Exception:  # the relay keeps paging without diagnoses; the cause is in the log
            log.exception("the insights reader stopped: alert messages go out without agent diagnoses until restart")
        finally:
            consumer.close()

    async def _follow_up_loop(self) -> None:
        while True:
            try:
                await self.send_follow_ups()
            except sqlite3.Error as exc:
                log.error("cannot read follow-ups from %s: %s", self.store.path, exc)
            await asyncio.sleep(FOLLOW_UP_POLL_S)

    async def send_follow_ups(self) -> EnqueueResult:
        """Queue a diagnosis follow-up for each paged recipient who has not read it; wakes the workers."""
        pending: list[FollowUp] = await asyncio.to_thread(self.store.follow_ups)
        if not pending:
            return EnqueueResult()
        console = self.settings.alerting.console_url
        items = [
            (
                f,
                NewDelivery(
                    f.receiver,
                    f.recipient,
                    f.address,
                    follow_up_alert(f.diagnosis, console),
                    f.external_url,
                    batch_key=f"dx/{f.diagnosis.equipment_id}/{f.diagnosis.episode_id}/{f.recipient}",
                ),
            )
            for f in pending
        ]
        result = await asyncio.to_thread(self.store.enqueue_follow_ups, items)
        for receiver in {f.receiver for f in pending}:
            if receiver in self._wake:
                self._wake[receiver].set()
        log.info("diagnosis follow-ups: %d queued for %d recipients", len(result.queued), len(pending))
        return result

    async def _housekeeping(self) -> None:
        last_prune = 0.0
        while True:
            try:
                depth = await asyncio.to_thread(self.store.queue_depth)
                for receiver in RECEIVERS:
                    self.metrics.queue_depth.labels(receiver).set(depth.get(receiver, 0))
                self.metrics.dead_letters.set(await asyncio.to_thread(self.store.dead_count))
                await asyncio.to_thread(self.delivery_log.flush)
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    if pruned := await asyncio.to_thread(self.store.prune):
                        log.info("pruned %d delivered messages older than the retention", pruned)
            except sqlite3.Error as exc:
                log.error("housekeeping cannot read %s: %s", self.store.path, exc)
            await asyncio.sleep(HOUSEKEEPING_S)

    async def health(self) -> dict[str, object]:
        depth = await asyncio.to_thread(self.store.queue_depth)
        return {
            "status": "ok",
            "queue": {r: depth.get(r, 0) for r in RECEIVERS},
            "in_flight": {r: len(self.in_flight[r]) for r in RECEIVERS},
            "dead_letters": await asyncio.to_thread(self.store.dead_count),
            "delivery_log": "down" if self.delivery_log.down else "ok",
        }


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (read no further: a flood costs no memory)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings | None = None, oncall: OnCall | None = None) -> FastAPI:
    """The relay as an ASGI app; the workers run for the app's lifespan."""
    settings = settings or get_settings()
    relay = Relay(settings, oncall)
    token_path = settings.relay_token_path
    token = ensure_token(token_path)  # before serving: a relay that cannot authenticate must not start

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    app = FastAPI(title="Vigil notification relay", lifespan=lifespan)
    app.state.relay = relay

    @app.post("/alertmanager/{receiver}")
    async def webhook(receiver: str, request: Request) -> JSONResponse:
        if not authorized(request.headers.get("authorization"), token):
            relay.metrics.webhooks.labels(receiver="any", outcome="unauthorized").inc()
            log.warning("refused a webhook without the relay's token from %s", request.client)
            return JSONResponse(
                {
                    "error": "missing or wrong bearer token: Alertmanager's webhook_configs need http_config."
                    f"authorization with the token in {token_path} (settings.alerting.webhook_token_file)"
                },
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = await _read_capped(request, settings.alerting.webhook_max_bytes)
        if body is None:
            relay.metrics.webhooks.labels(receiver="any", outcome="too_large").inc()
            limit = settings.alerting.webhook_max_bytes
            return JSONResponse(
                {"error": f"webhook body over {limit} bytes (settings.alerting.webhook_max_bytes)"}, 413
            )
        if receiver not in RECEIVERS:
            relay.metrics.webhooks.labels(receiver="unknown", outcome="unknown_receiver").inc()
            paths = ", ".join(f"/alertmanager/{r}" for r in RECEIVERS)
            return JSONResponse({"error": f"unknown receiver {receiver!r}: the relay serves {paths}"}, 404)
        try:
            payload = parse_webhook(body)
        except InvalidWebhook as exc:
            relay.metrics.webhooks.labels(receiver, "invalid").inc()
            log.warning("%s: rejected webhook: %s", receiver, exc)
            return JSONResponse({"error": str(exc)}, 422)
        try:
            result, not_routed = await relay.accept(receiver, payload)
        except sqlite3.Error as exc:  # not stored -> not acknowledged: Alertmanager retries
            relay.metrics.webhooks.labels(receiver, "store_error").inc()
            log.error("%s: cannot store webhook in %s: %s", receiver, relay.store.path, exc)
            return JSONResponse({"error": f"outbox unavailable ({exc}); retry later"}, 503)
        relay.metrics.webhooks.labels(receiver, "accepted").inc()
        if payload.truncatedAlerts:
            log.warning(
                "%s: Alertmanager left %d alerts out of group %s (max_alerts of the webhook config)",
                receiver,
                payload.truncatedAlerts,
                payload.groupKey,
            )
        body = {
            "receiver": receiver,
            "alerts": len(payload.alerts),
            "queued": len(result.queued),
            "duplicates": result.duplicates,
            "not_routed": not_routed,
            "resolved_without_firing": result.unannounced,
        }
        log.info("%s: webhook %s: %s", receiver, payload.groupKey or "-", body)
        return JSONResponse(body)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse(await relay.health())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(relay.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def deliver_now(settings: Settings, ids: Sequence[int] | None) -> list[Delivery]:
    """Resend dead letters (``ids`` or all) in this process, bypassing a running relay; returns their final rows."""
    store = Store(settings.alerting_state_path)
    try:
        moved = store.resend(ids, in_process=True)
        if moved:
            oncall = load_oncall(settings.alerting.receivers_path)
            async with httpx.AsyncClient(timeout=settings.alerting.request_timeout_s) as client:
                deliverer = Deliverer(
                    settings, store, oncall, client, RelayMetrics(), RateLimits(settings.alerting.rate_limit_per_minute)
                )
                await asyncio.gather(*(deliverer.deliver(batch) for batch in batches(store.get(moved))))
        # The attempts wait in the store; the relay ships them to ClickHouse (now if it runs, else on its start).
        return store.get(moved)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    a = settings.alerting
    parser = argparse.ArgumentParser(description="Vigil notification relay (Alertmanager webhooks -> people)")
    parser.add_argument("--host", default=a.relay_host)
    parser.add_argument("--port", type=int, default=a.relay_port)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    # httpx logs every request's URL at INFO, and a Slack incoming-webhook URL is a secret.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # While ClickHouse is down the delivery log warns once per outage; the client library would warn per retry.
    for noisy in ("urllib3.connectionpool", "clickhouse_connect.driver._backend.http_sync"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        app = create_app(settings)
    except (OnCallConfigError, TokenFileError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot read or create the webhook token %s: %s", settings.relay_token_path, exc)
        return 2
    except sqlite3.Error as exc:
        log.error("cannot open the relay state %s: %s (VIGIL_ALERTING__STATE_PATH)", settings.alerting_state_path, exc)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
