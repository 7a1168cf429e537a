"""Hot path to people: anomaly verdicts on Kafka -> alerts in Alertmanager (v2 API).

Consumes ``settings.kafka.anomalies_topic`` (group ``settings.alerting.publisher_consumer_group``) and folds each
polled batch into the active alerts with :class:`alerting.policy.AlertMapper` (which says what an alert is).

Delivery: each batch's changes are POSTed before its offsets are committed; while Alertmanager is down the POST
is retried with backoff (tenacity) and nothing is committed, so nothing is lost. Alertmanager de-duplicates by
label set, so a replay after a crash re-posts the same alerts harmlessly; verdicts of a window the publisher
already processed for that machine are skipped, so a replay never counts a clear window twice. On start the
active set is rebuilt from Alertmanager (alerts with source="vigil-scoring"), so a restarted publisher still
resolves what it fired before (its clear-window counts restart at 0: resolution may take up to
``resolve_after_clear_windows`` more windows).

Catching up on a backlog, an episode that began and ended inside one batch is posted resolved only:
Alertmanager does not page for it (it is history by then; ClickHouse has every verdict).

Latency: polls with a ``POLL_TIMEOUT_S`` timeout and posts each batch at once (no waiting for batches to fill).

Run one publisher per Alertmanager (a second one would re-post alerts the first resolved).
Self-metrics go to the Pushgateway as job ``vigil_alert_publisher``.

Run: ``python -m jobs.alert_publisher`` (until SIGTERM/SIGINT).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from confluent_kafka import KafkaException, Message
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from alerting.policy import SOURCE, AlertMapper, PublisherCounters
from connectors.alertmanager import (
    AlertmanagerClient,
    AlertmanagerError,
    AlertmanagerRejected,
    AlertmanagerUnavailable,
)
from connectors.kafka import ensure_topics, make_consumer, run_batches
from connectors.self_metrics import push_self_metrics
from vigil.logs import setup_logging
from vigil.settings import Settings, get_settings
from vigil.signals import stop_event_on_signals

log = logging.getLogger(__name__)

PUBLISHER_JOB = "vigil_alert_publisher"
POLL_TIMEOUT_S = 0.1  # Kafka poll: the longest a verdict waits in the publisher before it is posted
MAX_POLL_MESSAGES = 5000
HEARTBEAT_S = 10.0  # post (possibly nothing) at least this often: proves the publisher and Alertmanager alive
MAX_BACKOFF_S = 5.0  # retry Alertmanager at least this often while it is down


class _MetricsCollector:
    """The publisher's counters as Prometheus metrics (read at each push)."""

    def __init__(self, counters: Callable[[], PublisherCounters]) -> None:
        self._counters = counters

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        c = self._counters()
        p = "vigil_alert_publisher_"
        yield GaugeMetricFamily(
            p + "last_post_timestamp_seconds",
            "Unix time of the last POST Alertmanager accepted (at least every 10 s when alive).",
            value=c.last_post_ts,
        )
        yield GaugeMetricFamily(
            p + "alerts_firing", "Alerts (label sets) the publisher keeps firing.", value=c.alerts_firing
        )
        yield GaugeMetricFamily(
            p + "last_window_end_seconds",
            "End (event time) of the newest window processed.",
            value=c.last_window_end_ms / 1000.0,
        )
        for name, help_text, value in (
            ("verdicts_consumed", "Verdicts consumed from Kafka since start.", c.verdicts_consumed),
            ("bad_verdicts", "Verdicts skipped as invalid since start.", c.bad_verdicts),
            ("stale_verdicts", "Verdicts skipped as already processed (replays) since start.", c.stale_verdicts),
            (
                "alerts_posted",
                "Alerts accepted by Alertmanager (firing, re-posted, resolved) since start.",
                c.alerts_posted,
            ),
            ("alerts_rejected", "Alerts Alertmanager refused as invalid since start.", c.alerts_rejected),
            ("posts", "POSTs Alertmanager accepted since start.", c.posts),
            ("post_failures", "Failed POST attempts (Alertmanager down or refusing) since start.", c.post_failures),
        ):
            yield CounterMetricFamily(p + name, help_text, value=value)


class AlertPublisher:
    """Kafka verdicts -> Alertmanager, committing offsets only after Alertmanager accepted the batch's alerts."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.mapper = AlertMapper(settings)
        self.client = AlertmanagerClient.for_settings(settings)
        self._clock = clock
        self._lock = threading.Lock()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_MetricsCollector(lambda: self.counters))  # type: ignore[arg-type]
        self._to_post: list[dict[str, Any]] = []  # alert changes not yet accepted by Alertmanager
        self._next_repost = 0.0
        self._last_post = 0.0

    @property
    def counters(self) -> PublisherCounters:
        with self._lock:
            return self.mapper.counters

    def _count(self, **changes: float) -> None:
        with self._lock:
            self.mapper._count(**changes)  # type: ignore[arg-type]

    # -- Alertmanager ----------------------------------------------------------------------------------------
    def _retrying(self, stop: threading.Event, what: str) -> Retrying:
        def before_sleep(state: RetryCallState) -> None:
            self._count(post_failures=1)
            log.error(
                "%s failed (attempt %d, retrying in %.1f s; Kafka offsets not committed): %s",
                what,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
                state.outcome.exception() if state.outcome else "?",
            )

        return Retrying(
            retry=retry_if_exception_type(AlertmanagerUnavailable),
            wait=wait_exponential(multiplier=0.1, min=0.1, max=MAX_BACKOFF_S),
            stop=lambda _state: stop.is_set(),
            sleep=stop.wait,
            before_sleep=before_sleep,
            reraise=True,
        )

    def rebuild(self, stop: threading.Event) -> bool:
        """Load the alerts this publisher fired before a restart; waits for Alertmanager. False if stopped."""
        try:
            for attempt in self._retrying(stop, f"reading active alerts from {self.client.base_url}"):
                with attempt:
                    alerts = self.client.get_alerts([f'source="{SOURCE}"'])
        except AlertmanagerUnavailable:
            return False
        with self._lock:
            seeded = self.mapper.seed(alerts)
        log.info("rebuilt %d active alert conditions from Alertmanager", seeded)
        return True

    def post(self, alerts: list[dict[str, Any]], stop: threading.Event) -> bool:
        """POST until Alertmanager accepts (alerts it refuses as invalid are logged and dropped). False if stopped."""
        try:
            for attempt in self._retrying(stop, f"POST of {len(alerts)} alerts to {self.client.base_url}"):
                with attempt:
                    self._post_once(alerts)
        except AlertmanagerUnavailable:
            return False
        return True

    def _post_once(self, alerts: list[dict[str, Any]]) -> None:
        try:
            self.client.post_alerts(alerts)
            accepted, rejected = len(alerts), 0
        except AlertmanagerRejected as exc:  # one invalid alert fails the whole POST: find it, keep the rest
            log.error("Alertmanager refused a batch of %d alerts (%s); posting them one by one", len(alerts), exc)
            accepted = rejected = 0
            for alert in alerts:
                try:
                    self.client.post_alerts([alert])
                    accepted += 1
                except AlertmanagerRejected as one:
                    rejected += 1
                    log.error("dropped an alert Alertmanager refuses (%s): %s", one, alert)
        self._count(posts=1, alerts_posted=accepted, alerts_rejected=rejected, post_failures=1 if rejected else 0)
        with self._lock:
            self.mapper.counters = replace(self.mapper.counters, last_post_ts=self._clock())

    # -- metrics ---------------------------------------------------------------------------------------------
    def push_metrics(self) -> bool:
        return push_self_metrics(self.settings, PUBLISHER_JOB, self._registry)

    def _push_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.prometheus.push_interval_s):
            self.push_metrics()

    # -- main loop -------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume, post and commit until ``stop`` is set."""
        kafka, alerting = self.settings.kafka.as_identity("alerting"), self.settings.alerting
        topic = kafka.anomalies_topic
        try:  # subscribing to a missing topic would log an error at every poll
            ensure_topics(kafka, topics=[topic])
        except RuntimeError as exc:
            log.warning("could not check the topic (%s); consuming anyway", exc)
        pusher = threading.Thread(target=self._push_loop, args=(stop,), name="alert-publisher-metrics", daemon=True)
        pusher.start()
        if not self.rebuild(stop):
            self.client.close()
            return
        isolation = alerting.publisher_isolation_level
        consumer = make_consumer(kafka, alerting.publisher_consumer_group, **{"isolation.level": isolation})
        log.info(
            "publishing %s (%s) -> Alertmanager %s (group %s)",
            topic,
            isolation,
            self.client.base_url,
            alerting.publisher_consumer_group,
        )
        self._next_repost = time.monotonic()  # at once: refresh the endsAt of rebuilt alerts
        self._last_post = time.monotonic()
        try:
            run_batches(consumer, [topic], stop, self, max_messages=MAX_POLL_MESSAGES, timeout_s=POLL_TIMEOUT_S)
        finally:
            consumer.close()
            self.push_metrics()
            self.client.close()
            log.info("alert publisher stopped: %s", self.counters)

    # -- the batch it writes (run_batches polls and commits) ----------------------------------------
    def add(self, messages: list[Message]) -> None:
        """Fold verdicts into the active alerts; the changes (and due re-posts) wait for the next write."""
        now = self._clock()
        values = [m.value() for m in messages if m.value() is not None]
        with self._lock:
            alerts = self.mapper.apply(values, now)
            if time.monotonic() >= self._next_repost:
                self._next_repost = time.monotonic() + self.settings.alerting.repost_interval_s
                alerts = list(self.mapper.firing_alerts(now)) + alerts
        # Later changes of a label set replace earlier ones (a resolve after a re-post of the same alert).
        self._to_post = list(({_label_key(a): a for a in (*self._to_post, *alerts)}).values())

    def due(self, polled: list[Message]) -> bool:
        """Every batch (its offsets are committed once its alerts are posted), and the heartbeat."""
        return bool(polled) or bool(self._to_post) or time.monotonic() - self._last_post >= HEARTBEAT_S

    def write(self, stop: threading.Event, final: bool) -> bool:
        if not self._to_post and time.monotonic() - self._last_post < HEARTBEAT_S:
            return True  # nothing to post: the batch's verdicts changed no alert
        if not self.post(self._to_post, stop):
            return False  # stopped while Alertmanager is down: nothing of this batch is committed
        self._to_post = []
        self._last_post = time.monotonic()
        return True


def _label_key(alert: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(alert["labels"].items()))


def main() -> int:
    setup_logging()
    stop = stop_event_on_signals()
    settings = get_settings()
    try:
        AlertPublisher(settings).run(stop)
    except (AlertmanagerError, KafkaException, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
