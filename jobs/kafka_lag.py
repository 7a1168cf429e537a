"""Kafka consumer lag and topic growth -> Pushgateway, for the Prometheus rules (job ``vigil_kafka_lag``).

Every ``settings.alerting.lag_poll_s`` it reads, for each of Vigil's consumer groups (:func:`consumer_groups`),
the group's committed offsets and the end offsets of the topics it reads, and pushes

- ``vigil_kafka_consumer_lag{group,topic}``: records between the end of the topic and the group's commits,
  summed over partitions (a partition the group never committed counts from its first record). A group that
  has committed nothing on a topic at all is left out: it is not deployed (or never started), and a lag alert
  for it would only be noise; the services' own liveness rules cover a consumer that never starts;
- ``vigil_kafka_topic_end_offset{topic}``: the sum of the end offsets of every Vigil topic (records ever
  written; ``rate()`` of the dead-letter topic's is the dead-letter rate);
- ``vigil_kafka_lag_last_poll_timestamp_seconds`` and ``vigil_kafka_lag_poll_errors_total``.

Each push replaces the whole group (PUT), so a consumer group that disappears stops being reported.
Committed offsets are read with a Consumer of that group id that never subscribes (OffsetFetch only, it does
not join the group or disturb its members); end offsets with ``get_watermark_offsets``.

On topics the Flink jobs write in transactions every transaction ends with a commit marker, which takes an
offset of its own: a consumer that has read everything can read as up to one record behind per partition.

Run: ``python -m jobs.kafka_lag`` (until SIGTERM/SIGINT).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from connectors.kafka import topic_names
from connectors.self_metrics import push_self_metrics
from vigil.logs import setup_logging
from vigil.settings import Settings, get_settings
from vigil.signals import stop_event_on_signals

log = logging.getLogger(__name__)

LAG_JOB = "vigil_kafka_lag"
KAFKA_TIMEOUT_S = 10.0


def consumer_groups(settings: Settings) -> dict[str, list[str]]:
    """Every consumer group of Vigil and the topics it reads (kept next to the code that names the groups)."""
    kafka = settings.kafka
    return {
        settings.flink.consumer_group: [kafka.telemetry_topic],  # window-stats job (commits at checkpoints)
        settings.scoring.consumer_group: [kafka.window_stats_topic],  # anomaly-scoring job
        settings.clickhouse.sink_consumer_group: [kafka.window_stats_topic],
        f"{settings.clickhouse.sink_consumer_group}-anomalies": [kafka.anomalies_topic],  # clickhouse_sink.py
        f"{settings.clickhouse.sink_consumer_group}-insights": [kafka.insights_topic],  # clickhouse_sink.py
        settings.agents.consumer_group: [kafka.anomalies_topic],  # agents job (commits at checkpoints)
        settings.prometheus.sink_consumer_group: [kafka.window_stats_topic, kafka.anomalies_topic],
        settings.alerting.publisher_consumer_group: [kafka.anomalies_topic],
        settings.alerting.insights_consumer_group: [kafka.insights_topic],  # relay: diagnoses for alert text
    }


@dataclass
class LagSnapshot:
    """One poll: lag per (group, topic), end offset per topic."""

    lag: dict[tuple[str, str], int] = field(default_factory=dict)
    end_offsets: dict[str, int] = field(default_factory=dict)
    polled_at: float = 0.0


class KafkaLagExporter:
    """Polls committed and end offsets; :meth:`push` sends the latest snapshot to the Pushgateway."""

    def __init__(self, settings: Settings, groups: dict[str, list[str]] | None = None) -> None:
        self.settings = settings
        self.groups = groups if groups is not None else consumer_groups(settings)
        self.topics = list(
            dict.fromkeys([*topic_names(settings.kafka), *(t for ts in self.groups.values() for t in ts)])
        )
        self._conf = settings.kafka.as_identity("monitor").client_config() | {"enable.auto.commit": False}
        # One non-subscribing consumer per group (committed() reads that group's offsets), plus one for watermarks.
        self._consumers: dict[str, Consumer] = {}
        self._lock = threading.Lock()
        self.snapshot = LagSnapshot()
        self.poll_errors = 0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(lambda: (self.snapshot, self.poll_errors)))  # type: ignore[arg-type]

    def _consumer(self, group: str) -> Consumer:
        if group not in self._consumers:
            self._consumers[group] = Consumer(self._conf | {"group.id": group})
        return self._consumers[group]

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()

    # -- polling -----------------------------------------------------------------------------------------------
    def poll(self) -> LagSnapshot:
        """Read every group's committed offsets and every topic's end offsets; raises KafkaException on failure."""
        watermarks = self._consumer(self._watermark_group())
        metadata = watermarks.list_topics(timeout=KAFKA_TIMEOUT_S).topics
        partitions = {t: sorted(metadata[t].partitions) for t in self.topics if t in metadata}
        low: dict[tuple[str, int], int] = {}
        high: dict[tuple[str, int], int] = {}
        for topic, parts in partitions.items():
            for p in parts:
                low[(topic, p)], high[(topic, p)] = watermarks.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=KAFKA_TIMEOUT_S, cached=False
                )
        snapshot = LagSnapshot(
            end_offsets={t: sum(high[(t, p)] for p in parts) for t, parts in partitions.items()},
            polled_at=time.time(),
        )
        for group, topics in self.groups.items():
            wanted = [TopicPartition(t, p) for t in topics for p in partitions.get(t, [])]
            if not wanted:
                continue
            committed = self._consumer(group).committed(wanted, timeout=KAFKA_TIMEOUT_S)
            for topic in topics:
                offsets = [tp for tp in committed if tp.topic == topic]
                if not any(tp.offset >= 0 for tp in offsets):
                    continue  # the group never committed on this topic: not deployed
                snapshot.lag[(group, topic)] = sum(
                    max(0, high[(topic, tp.partition)] - (tp.offset if tp.offset >= 0 else low[(topic, tp.partition)]))
                    for tp in offsets
                )
        with self._lock:
            self.snapshot = snapshot
        return snapshot

    def _watermark_group(self) -> str:
        return f"{self.settings.alerting.publisher_consumer_group}-lag-exporter"

    # -- pushing -----------------------------------------------------------------------------------------------
    def push(self) -> bool:
        return push_self_metrics(self.settings, LAG_JOB, self._registry, what="Kafka lag")

    def run(self, stop: threading.Event) -> None:
        """Poll and push every ``lag_poll_s`` until ``stop`` is set."""
        interval = self.settings.alerting.lag_poll_s
        log.info(
            "exporting consumer lag of %s every %.1f s to %s",
            sorted(self.groups),
            interval,
            self.settings.prometheus.pushgateway_url,
        )
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.poll()
                except KafkaException as exc:
                    self.poll_errors += 1
                    log.error(
                        "reading offsets from Kafka at %s failed (%s); retrying in %.1f s",
                        self.settings.kafka.bootstrap_servers,
                        exc,
                        interval,
                    )
                self.push()
                stop.wait(max(0.0, interval - (time.monotonic() - started)))
        finally:
            self.close()


class _Collector:
    def __init__(self, read: Callable[[], tuple[LagSnapshot, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        snapshot, errors = self._read()
        lag = GaugeMetricFamily(
            "vigil_kafka_consumer_lag",
            "Records between the end of the topic and the consumer group's committed offsets, summed over partitions.",
            labels=["group", "topic"],
        )
        for (group, topic), value in sorted(snapshot.lag.items()):
            lag.add_metric([group, topic], value)
        yield lag
        ends = GaugeMetricFamily(
            "vigil_kafka_topic_end_offset",
            "Sum of the topic's partition end offsets (records ever written; rate() is the write rate).",
            labels=["topic"],
        )
        for topic, value in sorted(snapshot.end_offsets.items()):
            ends.add_metric([topic], value)
        yield ends
        yield GaugeMetricFamily(
            "vigil_kafka_lag_last_poll_timestamp_seconds",
            "Unix time of the last successful read of the offsets.",
            value=snapshot.polled_at,
        )
        yield CounterMetricFamily(
            "vigil_kafka_lag_poll_errors", "Failed reads of the offsets since start.", value=errors
        )


def main() -> int:
    setup_logging()
    stop = stop_event_on_signals()
    KafkaLagExporter(get_settings()).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
