"""Kafka topics into ClickHouse (the cold path): window statistics, anomaly verdicts and the agents' insights.

One sink class, parameterised by a :class:`TableSpec` (topic, record contract -> Arrow
converter, table, consumer group); one instance per topic.

At-least-once by construction: Kafka offsets are committed only after ClickHouse accepted the
insert holding those records (and after any malformed ones reached the dead-letter topic). A
crash or retry can therefore insert a record twice; the ReplacingMergeTree tables keyed by
(equipment_id, sensor, window_start) and (equipment_id, window_start) make that invisible
through ``FINAL`` / the ``window_stats_latest`` and ``anomalies_latest`` views.

Each topic has its own consumer (group ``sink_consumer_group`` for window stats,
``<sink_consumer_group>-anomalies`` for verdicts, ``<sink_consumer_group>-insights`` for insights), in its
own thread: a topic's committed offsets are exactly what its table holds, its lag shows per group, and a
problem with one table (a rejected insert, a dropped table) stalls only that topic. The streams share
nothing but the ClickHouse server, so running them together buys no atomicity that separate groups lose.

Run: ``python -m jobs.clickhouse_sink`` (every topic, until SIGTERM/SIGINT).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError
from confluent_kafka import KafkaException, Message
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connectors.clickhouse import (
    INSIGHT_RECORDS,
    WINDOW_STATS_RECORDS,
    WINDOW_STATS_TABLE,
    ClickHouseUnavailable,
    RecordSpec,
    anomaly_records,
    insert_rows,
    make_client,
    records_to_arrow,
    require_tables,
)
from connectors.kafka import DeadLetterWriter, ensure_topics, make_consumer, make_producer, run_batches
from connectors.self_metrics import push_self_metrics
from detectors import score_names
from vigil.logs import setup_logging
from vigil.settings import Settings
from vigil.signals import stop_event_on_signals

log = logging.getLogger(__name__)

DEAD_LETTER_SOURCE = "clickhouse-sink"
_UNKNOWN_TABLE_CODES = {60, 81}  # UNKNOWN_TABLE, UNKNOWN_DATABASE: someone dropped the schema
_MAX_BACKOFF_S = 30.0
_MAX_POLL_MESSAGES = 10_000
_FINAL_FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TableSpec:
    """One topic into one ClickHouse table: everything that differs between the sink's instances."""

    topic: str
    table: str
    records: RecordSpec  # JSON contract -> Arrow rows, and the dead-letter reason of bad records
    consumer_group: str  # its committed offsets = what the table holds


def window_stats_spec(settings: Settings) -> TableSpec:
    return TableSpec(
        topic=settings.kafka.window_stats_topic,
        table=WINDOW_STATS_TABLE,
        records=WINDOW_STATS_RECORDS,
        consumer_group=settings.clickhouse.sink_consumer_group,
    )


def anomalies_spec(settings: Settings) -> TableSpec:
    return TableSpec(
        topic=settings.kafka.anomalies_topic,
        table=settings.clickhouse.anomalies_table,
        records=anomaly_records(score_names()),
        consumer_group=f"{settings.clickhouse.sink_consumer_group}-anomalies",
    )


def insights_spec(settings: Settings) -> TableSpec:
    return TableSpec(
        topic=settings.kafka.insights_topic,
        table=settings.clickhouse.insights_table,
        records=INSIGHT_RECORDS,
        consumer_group=f"{settings.clickhouse.sink_consumer_group}-insights",
    )


def table_specs(settings: Settings) -> list[TableSpec]:
    """Every topic the cold path stores."""
    return [window_stats_spec(settings), anomalies_spec(settings), insights_spec(settings)]


@dataclass
class SinkStats:
    """Counters other threads may read (via :meth:`ClickHouseSink.stats`)."""

    rows_written: int = 0
    batches: int = 0
    malformed: int = 0
    errors: int = 0
    last_insert_latency_s: float = 0.0
    # Wall clock from the newest window's emitted_at to the moment the insert returned.
    last_emit_to_visible_s: float = 0.0
    last_error: str = ""
    last_flush_at: float = 0.0


def dedup_token(messages: list[Message]) -> str:
    """The batch's name for ClickHouse's insert de-duplication: its Kafka offsets, so every retry of the same
    batch carries the same token (a batch re-read after a restart may be cut differently: then the
    ReplacingMergeTree key still collapses the copies)."""
    spans: dict[tuple[str, int], list[int]] = {}
    for m in messages:
        span = spans.setdefault((m.topic() or "", m.partition() or 0), [m.offset(), m.offset()])
        span[0], span[1] = min(span[0], m.offset()), max(span[1], m.offset())
    text = ";".join(f"{t}/{p}:{lo}-{hi}" for (t, p), (lo, hi) in sorted(spans.items()))
    return hashlib.sha256(text.encode()).hexdigest()


class ClickHouseSink:
    """Consumes one topic (window stats unless ``spec`` says otherwise) into ClickHouse in Arrow batches."""

    def __init__(self, settings: Settings, spec: TableSpec | None = None) -> None:
        self.settings = settings
        self.spec = spec or window_stats_spec(settings)
        self._stats = SinkStats()
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._pending: list[Message] = []  # added since the last insert
        self._first_pending_at = 0.0
        self._dead_letters: DeadLetterWriter | None = None

    # -- counters --------------------------------------------------------------------------------
    def stats(self) -> SinkStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return SinkStats(**asdict(self._stats))

    def _count(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                if name in ("rows_written", "batches", "malformed", "errors"):
                    setattr(self._stats, name, getattr(self._stats, name) + value)
                else:
                    setattr(self._stats, name, value)

    # -- main loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume, batch and insert until ``stop`` is set; flushes what it holds before returning."""
        ch = self.settings.clickhouse
        kafka = self.settings.kafka.as_identity("sinks")
        ensure_topics(kafka, topics=[self.spec.topic, kafka.dead_letter_topic])
        self._client = self._connect(stop)
        if self._client is None:
            return
        producer = make_producer(kafka)
        dead_letters = DeadLetterWriter(producer, kafka, source=DEAD_LETTER_SOURCE)
        spec = self.spec
        consumer = make_consumer(kafka, spec.consumer_group)
        self._pending = []
        self._dead_letters = dead_letters
        log.info(
            "ClickHouse sink: %s -> %s:%d/%s.%s (group %s, batch %d rows or %.2fs)",
            spec.topic,
            ch.host,
            ch.port,
            ch.database,
            spec.table,
            spec.consumer_group,
            ch.insert_batch_rows,
            ch.flush_interval_s,
        )
        try:
            run_batches(
                consumer,
                [spec.topic],
                stop,
                self,
                max_messages=min(ch.insert_batch_rows, _MAX_POLL_MESSAGES),
                timeout_s=min(0.1, ch.flush_interval_s),
            )
        finally:
            consumer.close()
            producer.flush(10)
            self._client.close()
            log.info("ClickHouse sink for %s stopped: %s", spec.topic, self.stats())

    # -- the batch it writes (run_batches polls and commits) ----------------------------------------
    def add(self, messages: list[Message]) -> None:
        if messages and not self._pending:
            self._first_pending_at = time.monotonic()
        self._pending.extend(messages)

    def due(self, polled: list[Message]) -> bool:
        """Full, the oldest record waited long enough, or the topic went quiet (a window burst is in)."""
        ch = self.settings.clickhouse
        return bool(self._pending) and (
            len(self._pending) >= ch.insert_batch_rows
            or time.monotonic() - self._first_pending_at >= ch.flush_interval_s
            or not polled
        )

    def write(self, stop: threading.Event, final: bool) -> bool:
        if not self._pending:
            return True
        assert self._dead_letters is not None, "write() before run()"
        if not self._flush(self._pending, self._dead_letters, stop, final=final):
            return False
        self._pending = []
        return True

    def _connect(self, stop: threading.Event) -> Client | None:
        """Connect as the sink's identity and check its table exists, retrying while ClickHouse is not ready.

        The sink may only insert: the schema is applied by the admin identity (`vigil stack up` does)."""
        backoff = 0.5
        while not stop.is_set():
            try:
                client = make_client(self.settings.clickhouse, "sink")
                require_tables(client, self.settings.clickhouse, [self.spec.table.rpartition(".")[2]])
                return client
            except (ClickHouseUnavailable, DriverError) as exc:
                self._count(errors=1, last_error=str(exc))
                log.error("ClickHouse not ready (retrying in %.1fs): %s", backoff, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        return None

    def _flush(
        self,
        messages: list[Message],
        dead_letters: DeadLetterWriter,
        stop: threading.Event,
        final: bool = False,
    ) -> bool:
        """Insert ``messages`` and dead-letter the malformed ones (run_batches then commits their offsets).

        Returns False (nothing committed) only if ``stop`` was set while ClickHouse kept failing;
        the records are then read again by the next run.
        """
        values = [m.value() or b"" for m in messages]
        records = self.spec.records
        table, malformed = records_to_arrow(values, records)
        for bad in malformed:
            key = messages[bad.index].key()
            dead_letters.write(
                records.malformed_reason,
                bad.detail,
                equipment_id=key.decode("utf-8", "replace") if key else "",
                payload_bytes=bad.value,
            )
        if malformed:
            dead_letters.flush()  # the dead letters must be durable before we commit past them
            self._count(malformed=len(malformed))
            log.warning("dead-lettered %d malformed %s records", len(malformed), records.name)

        token = dedup_token(messages)
        backoff = 0.25
        # On shutdown keep trying briefly, then leave the rest to the next run (nothing committed).
        give_up_at = time.monotonic() + _FINAL_FLUSH_TIMEOUT_S
        while True:
            started = time.monotonic()
            try:
                written = insert_rows(self._client, self.spec.table, table, token)  # type: ignore[arg-type]
                break
            except Exception as exc:  # every failure is retried; nothing is committed meanwhile
                self._count(errors=1, last_error=str(exc))
                code = getattr(exc, "code", None)
                log.error(
                    "ClickHouse insert of %d rows into %s failed (retrying in %.2fs, offsets not committed): %s",
                    table.num_rows,
                    self.spec.table,
                    backoff,
                    exc,
                )
                if code in _UNKNOWN_TABLE_CODES:
                    log.error(
                        "table %s is gone: apply the schema as the admin identity (`vigil stack up` does it "
                        "when it starts ClickHouse); the sink keeps retrying",
                        self.spec.table,
                    )
                if final:
                    if time.monotonic() + backoff > give_up_at:
                        log.error("giving up on %d rows at shutdown; they will be re-read", table.num_rows)
                        return False
                    time.sleep(backoff)
                elif stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        latency = time.monotonic() - started
        emit_lag = 0.0
        if table.num_rows:
            newest = pc.max(table.column("emitted_at")).value / 1000.0
            emit_lag = max(0.0, time.time() - newest)
        self._count(
            rows_written=written,
            batches=1,
            last_insert_latency_s=latency,
            last_emit_to_visible_s=emit_lag,
            last_flush_at=time.time(),
        )
        log.debug("inserted %d rows into %s in %.1f ms", written, self.spec.table, latency * 1000)
        return True


STATS_JOB = "vigil_clickhouse_sink"
_STATS_METRICS = (  # (name, Prometheus type, help, SinkStats field)
    ("vigil_clickhouse_sink_rows_written", "counter", "Rows inserted since start.", "rows_written"),
    ("vigil_clickhouse_sink_errors", "counter", "Failed inserts, connects and commits since start.", "errors"),
    ("vigil_clickhouse_sink_malformed", "counter", "Records dead-lettered as malformed since start.", "malformed"),
    (
        "vigil_clickhouse_sink_last_flush_timestamp_seconds",
        "gauge",
        "Unix time of the last successful insert (0 = none yet).",
        "last_flush_at",
    ),
    (
        "vigil_clickhouse_sink_last_emit_to_visible_seconds",
        "gauge",
        "Newest row's emitted_at to insert done, last insert.",
        "last_emit_to_visible_s",
    ),
)


class _StatsCollector:
    """The sinks' counters as Prometheus metrics, one series per table (read at each push)."""

    def __init__(self, sinks: list[ClickHouseSink]) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator[Metric]:
        stats = [(sink.spec.table, asdict(sink.stats())) for sink in self._sinks]
        for name, kind, help_text, field in _STATS_METRICS:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, help_text, labels=["table"]
            )
            for table, values in stats:
                family.add_metric([table], float(values[field]))
            yield family


def _push_stats(settings: Settings, sinks: list[ClickHouseSink], stop: threading.Event) -> None:
    """Push the sinks' counters to the Pushgateway every push interval (and once more at the end)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(sinks))  # type: ignore[arg-type]
    while True:
        stopping = stop.wait(settings.prometheus.push_interval_s)
        push_self_metrics(settings, STATS_JOB, registry, what="the sink stats")
        if stopping:
            return


def run_sinks(
    settings: Settings, stop: threading.Event, specs: list[TableSpec] | None = None, push_stats: bool = False
) -> list[ClickHouseSink]:
    """Run one sink per spec (every topic by default), each in its own thread, until ``stop`` is set.

    If one sink fails, ``stop`` is set so the others flush and stop too, and its error is raised:
    the process exits and its supervisor restarts all of them from their committed offsets.
    With ``push_stats`` their counters go to the Pushgateway (job ``vigil_clickhouse_sink``) for the
    VigilClickHouseWritesFailing / VigilClickHouseSinkStalled rules.
    """
    sinks = [ClickHouseSink(settings, spec) for spec in specs or table_specs(settings)]
    errors: list[BaseException] = []

    def run(sink: ClickHouseSink) -> None:
        try:
            sink.run(stop)
        except BaseException as exc:  # re-raised below, after every sink has stopped
            log.error("ClickHouse sink for %s failed; stopping the others: %s", sink.spec.topic, exc)
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(sink,), name=f"clickhouse-sink:{sink.spec.topic}") for sink in sinks]
    if push_stats:
        threads.append(threading.Thread(target=_push_stats, args=(settings, sinks, stop), name="clickhouse-sink-stats"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sinks


def main() -> int:
    setup_logging()
    stop = stop_event_on_signals()
    try:
        run_sinks(Settings(), stop, push_stats=True)
    except (RuntimeError, KafkaException) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
