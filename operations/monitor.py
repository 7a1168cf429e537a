"""Live pipeline figures for the terminal: points/s in, windows/s out, lag, rows in ClickHouse.

Watches the pipeline from outside, the way an operator would: it reads the window-stats and
dead-letter topics with its own consumer group (from the latest offset) and counts ClickHouse
rows; the simulator reports what it sent.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import orjson
import requests
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from connectors.clickhouse import make_client
from connectors.kafka import consume_batches, make_consumer
from connectors.monitoring import MonitoringCredentialsMissing, monitoring_session
from vigil.contracts import WINDOW_STATS_MARKER_PREFIX
from vigil.settings import Settings

log = logging.getLogger(__name__)
MARKER_KEY = WINDOW_STATS_MARKER_PREFIX.encode()


@dataclass
class Rate:
    """Events per second over a sliding window of a few seconds."""

    horizon_s: float = 10.0
    samples: deque = field(default_factory=deque)
    total: int = 0

    def add(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.total += count
        self.samples.append((now, self.total))
        while self.samples and now - self.samples[0][0] > self.horizon_s:
            self.samples.popleft()

    def per_second(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class PipelineMonitor:
    """Counts windows and dead letters as they appear, and measures how far behind windows are."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.points_in = Rate()
        self.batches_in = Rate()
        self.windows_out = Rate()
        self.dead_letters = Rate()
        self.dead_letter_reasons: dict[str, int] = {}
        self.verdicts = Rate()
        self.verdicts_by_severity: dict[str, int] = {}
        self.latest_anomalies: deque[str] = deque(maxlen=3)  # newest anomaly summaries, for the demo table
        self.models_status = ""  # the live models the scoring job uses (the demo's table)
        self.send_errors = 0
        self.rejected = 0
        self.faults_active = 0
        self.last_window_end_ms = 0
        self.emit_lag_s: deque[float] = deque(maxlen=5000)  # window end -> emitted by Flink
        self.clickhouse_rows: int | None = None
        self.alerts_active: int | None = None  # in Alertmanager (not silenced or inhibited)
        self.notifications: dict[str, int] = {}  # delivered by the relay, per receiver
        self.notification_dead_letters: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._watch_topics, name="monitor-kafka", daemon=True),
            threading.Thread(target=self._watch_clickhouse, name="monitor-clickhouse", daemon=True),
            threading.Thread(target=self._watch_alerting, name="monitor-alerting", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def record_sent(
        self, batches: int, points: int, errors: int = 0, rejected: int = 0, faults_active: int | None = None
    ) -> None:
        self.batches_in.add(batches)
        self.points_in.add(points)
        self.send_errors += errors
        self.rejected += rejected
        if faults_active is not None:
            self.faults_active = faults_active

    def _watch_topics(self) -> None:
        kafka = self.settings.kafka.as_identity("admin")
        consumer = make_consumer(kafka, f"vigil-monitor-{uuid.uuid4().hex[:8]}", **{"auto.offset.reset": "latest"})
        try:
            for messages in consume_batches(
                consumer, [kafka.window_stats_topic, kafka.dead_letter_topic, kafka.anomalies_topic], self._stop
            ):
                windows = [
                    m
                    for m in messages
                    if m.topic() == kafka.window_stats_topic and not (m.key() or b"").startswith(MARKER_KEY)
                ]
                letters = [m for m in messages if m.topic() == kafka.dead_letter_topic]
                verdicts = [m for m in messages if m.topic() == kafka.anomalies_topic]
                if verdicts:
                    self.verdicts.add(len(verdicts))
                    for message in verdicts:
                        record = orjson.loads(message.value())
                        severity = record.get("severity", "?")
                        self.verdicts_by_severity[severity] = self.verdicts_by_severity.get(severity, 0) + 1
                        if record.get("is_anomaly"):
                            self.latest_anomalies.append(f"{record.get('equipment_id')}: {record.get('summary')}")
                if windows:
                    self.windows_out.add(len(windows))
                    for message in windows[-50:]:  # a sample is enough for the lag figure
                        record = orjson.loads(message.value())
                        self.last_window_end_ms = max(self.last_window_end_ms, record["window_end_ms"])
                        self.emit_lag_s.append((record["emitted_at_ms"] - record["window_end_ms"]) / 1000)
                if letters:
                    self.dead_letters.add(len(letters))
                    for message in letters:
                        reason = orjson.loads(message.value()).get("reason", "?")
                        self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + 1
        except Exception:  # the monitor must never take the demo down
            log.exception("pipeline monitor stopped reading Kafka")
        finally:
            consumer.close()

    def _watch_clickhouse(self) -> None:

        client = None
        while not self._stop.wait(2.0):
            try:
                client = client or make_client(self.settings.clickhouse, "admin")
                self.clickhouse_rows = int(client.command("SELECT count() FROM window_stats"))
            except Exception as exc:  # server restarting: show it, keep trying
                log.debug("clickhouse count failed: %s", exc)
                client = None

    def _watch_alerting(self) -> None:
        """Active alerts from Alertmanager's API and delivered notifications from the relay's metrics."""

        a = self.settings.alerting
        alerts_url = f"{self.settings.prometheus.alertmanager_url}/api/v2/alerts"
        metrics_url = f"http://{a.relay_host}:{a.relay_port}/metrics"
        alertmanager: requests.Session | None = None
        while not self._stop.wait(2.0):
            try:
                alertmanager = alertmanager or monitoring_session(self.settings)
                active = alertmanager.get(alerts_url, params={"silenced": "false", "inhibited": "false"}, timeout=2)
                active.raise_for_status()
                self.alerts_active = len(active.json())
            except (requests.RequestException, ValueError, MonitoringCredentialsMissing):
                self.alerts_active = None
            try:
                text = requests.get(metrics_url, timeout=2).text
            except requests.RequestException:
                continue
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "vigil_notify_delivered_total":
                        self.notifications[sample.labels["receiver"]] = int(sample.value)
                    elif sample.name == "vigil_notify_dead_letters":
                        self.notification_dead_letters = int(sample.value)

    def window_lag_s(self) -> float | None:
        """How far the newest emitted window trails the wall clock."""
        if not self.last_window_end_ms:
            return None
        return time.time() - self.last_window_end_ms / 1000

    def table(self, title: str = "Vigil pipeline") -> Table:
        table = Table(title=title, show_header=True, header_style="bold")
        table.add_column("figure")
        table.add_column("value", justify="right")
        lag = self.window_lag_s()
        emit = sorted(self.emit_lag_s)
        p50 = f"{emit[len(emit) // 2]:.1f} s" if emit else "-"
        table.add_row("points/s in (gRPC)", f"{self.points_in.per_second():,.0f}")
        table.add_row(
            "batches sent / send errors / rejected",
            f"{self.batches_in.total:,} / {self.send_errors:,} / {self.rejected:,}",
        )
        table.add_row("injected faults active (labelled)", f"{self.faults_active:,}")
        table.add_row("windows/s out (Flink)", f"{self.windows_out.per_second():,.0f}")
        table.add_row("windows out (total)", f"{self.windows_out.total:,}")
        table.add_row("window lag (now - newest window end)", f"{lag:.1f} s" if lag is not None else "-")
        table.add_row("window end -> emitted (p50)", p50)
        by_severity = " / ".join(f"{self.verdicts_by_severity.get(k, 0):,}" for k in ("normal", "warning", "critical"))
        table.add_row("verdicts/s (scoring job)", f"{self.verdicts.per_second():,.0f}")
        table.add_row("verdicts normal / warning / critical", by_severity)
        if self.models_status:
            table.add_row("models", self.models_status)
        for summary in self.latest_anomalies:
            table.add_row("  latest anomaly", summary[:110])
        rows = self.clickhouse_rows
        table.add_row("rows in ClickHouse window_stats", f"{rows:,}" if rows is not None else "-")
        active = self.alerts_active
        table.add_row("alerts active (Alertmanager)", f"{active:,}" if active is not None else "-")
        sent = " / ".join(f"{self.notifications.get(k, 0):,}" for k in ("slack", "sms", "email"))
        dead = self.notification_dead_letters
        table.add_row("notifications slack / sms / email", sent + (f" ({dead} dead letters)" if dead else ""))
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letter_reasons.items())) or "none"
        table.add_row("dead letters", f"{self.dead_letters.total:,} ({reasons})")
        return table
