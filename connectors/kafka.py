"""Kafka plumbing shared by the edge service, the sinks and the tools.

Everything here builds on :meth:`KafkaSettings.client_config`, so the same code talks to the
local Apache Kafka broker and to a real cluster with SASL/TLS.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from vigil.settings import KafkaSettings

log = logging.getLogger(__name__)


def topic_names(settings: KafkaSettings) -> list[str]:
    return [
        settings.telemetry_topic,
        settings.window_stats_topic,
        settings.dead_letter_topic,
        settings.anomalies_topic,
        settings.insights_topic,
    ]


def ensure_topics(settings: KafkaSettings, timeout: float = 30.0, topics: list[str] | None = None) -> None:
    """Create Vigil's topics (partitioned, with retention) if they do not exist yet."""
    admin = AdminClient(settings.client_config())
    wanted = topics or topic_names(settings)
    try:
        metadata = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise RuntimeError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}. "
            "Start the local stack with `vigil stack up` or set VIGIL_KAFKA__BOOTSTRAP_SERVERS."
        ) from exc
    existing = set(metadata)
    # The window-stats job writes a progress marker to each of kafka.partitions partitions of its topic, and
    # its readers never declare a partition idle: one the markers miss could hold their watermark for good.
    stats = metadata.get(settings.window_stats_topic)
    if settings.window_stats_topic in wanted and stats is not None and len(stats.partitions) != settings.partitions:
        raise RuntimeError(
            f"topic {settings.window_stats_topic!r} has {len(stats.partitions)} partitions but kafka.partitions is "
            f"{settings.partitions}: set VIGIL_KAFKA__PARTITIONS={len(stats.partitions)} (the window-stats job "
            "writes a progress marker to each partition it expects)"
        )
    missing = [
        NewTopic(
            name,
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            # Batches of a busy machine and dead letters carrying whole rejected requests exceed the
            # usual 1 MiB default; allow up to 8 MiB like the producer does.
            config={
                "retention.ms": str(settings.retention_ms),
                "cleanup.policy": "delete",
                "max.message.bytes": str(8 * 1024 * 1024),
                # Dead letters are kept by size too: a flood of rejected input must not fill the broker's disk.
                **(
                    {"retention.bytes": str(settings.dead_letter_retention_bytes)}
                    if name == settings.dead_letter_topic
                    else {}
                ),
            },
        )
        for name in wanted
        if name not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s (%d partitions)", name, settings.partitions)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                user = settings.credentials()[0] if settings.uses_sasl else "this client"
                raise RuntimeError(
                    f"topic {name!r} does not exist (or {user} may not see it) and {user} may not create it: "
                    "topics are created by `vigil stack up` (as the admin principal) or by your cluster's "
                    "operators; check that this component's ACLs cover the topic"
                ) from exc
            raise RuntimeError(f"could not create topic {name!r}: {exc}") from exc


def make_producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    """Idempotent producer (acks=all): a retried send never duplicates or reorders a record."""
    conf = settings.client_config() | {
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.max.bytes": 8 * 1024 * 1024,
    }
    conf.update(overrides)
    return Producer(conf)


def make_consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    """Manual-commit consumer: callers commit only after their side effect succeeded."""
    conf = settings.client_config() | {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
    }
    conf.update(overrides)
    return Consumer(conf)


def consume_batches(
    consumer: Consumer,
    topics: list[str],
    stop: threading.Event,
    max_messages: int = 5000,
    timeout_s: float = 0.5,
) -> Iterator[list[Message]]:
    """Yield lists of good messages until ``stop`` is set.

    An empty list is yielded on timeout so callers can flush on time. Transient errors are
    logged; fatal ones raise.
    """
    consumer.subscribe(topics)
    while not stop.is_set():
        messages = consumer.consume(max_messages, timeout_s)
        good: list[Message] = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka consumer error on %s: %s", message.topic(), error)
        yield good


class BatchSink(Protocol):
    """What a consumer process does with its records; :func:`run_batches` decides polling and commits.

    ``add`` takes each polled batch (possibly empty); ``due`` says whether to write now; ``write`` makes every
    record added so far durable (inserted, pushed, posted) and returns False if it could not: nothing is
    committed then (the next successful write covers those records too, or the next run reads them again).
    """

    def add(self, messages: list[Message]) -> None: ...

    def due(self, polled: list[Message]) -> bool: ...

    def write(self, stop: threading.Event, final: bool) -> bool: ...


def run_batches(
    consumer: Consumer,
    topics: list[str],
    stop: threading.Event,
    sink: BatchSink,
    *,
    max_messages: int = 5000,
    timeout_s: float = 0.5,
) -> None:
    """Consume -> ``sink.add`` -> ``sink.write`` when due -> commit, until ``stop``; then one final write.

    Offsets are committed only after a write returned True, and only up to what was added before it, so
    a crash at any point re-reads (never skips) records; sinks are idempotent for that reason.
    """
    uncommitted: dict[tuple[str, int], int] = {}
    for batch in consume_batches(consumer, topics, stop, max_messages=max_messages, timeout_s=timeout_s):
        sink.add(batch)
        for m in batch:
            key = (m.topic(), m.partition())
            uncommitted[key] = max(uncommitted.get(key, 0), m.offset() + 1)
        if sink.due(batch):
            if sink.write(stop, final=False):
                uncommitted = commit_offsets(consumer, uncommitted)
            elif stop.is_set():
                break  # stopped while the target kept failing: nothing more is committed
    else:
        if sink.write(stop, final=True):
            commit_offsets(consumer, uncommitted)


def commit_offsets(consumer: Consumer, offsets: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Commit next offsets per (topic, partition); returns what is still uncommitted (all of it on failure)."""
    if not offsets:
        return offsets
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    except KafkaException as exc:
        # E.g. a rebalance moved the partition: its new owner re-reads these records (the sinks are idempotent).
        log.warning("offset commit failed (the records will be read again, harmlessly): %s", exc)
        return offsets
    return {}


DEAD_LETTER_PAYLOAD_MAX = 256 * 1024  # bytes of a rejected payload kept in its dead letter (base64 ~342 KiB)


def dead_letter_value(
    source: str,
    reason: str,
    detail: str,
    equipment_id: str = "",
    payload_bytes: bytes | None = None,
    payload: object | None = None,
) -> bytes:
    """The dead-letter record: why it was rejected, and the original payload so nothing is lost.

    A payload over ``DEAD_LETTER_PAYLOAD_MAX`` bytes keeps its first that many, with its size and sha256: a
    rejected 4-MiB request must not become a record the topic refuses (or one that fills it)."""
    record: dict[str, Any] = {
        "source": source,
        "reason": reason,
        "detail": detail,
        "equipment_id": equipment_id,
        "received_at_ms": int(time.time() * 1000),
    }
    if payload_bytes is not None:
        kept = payload_bytes[:DEAD_LETTER_PAYLOAD_MAX]
        record["payload_b64"] = base64.b64encode(kept).decode("ascii")
        if len(kept) < len(payload_bytes):
            record |= {
                "payload_truncated": True,
                "payload_size": len(payload_bytes),
                "payload_sha256": hashlib.sha256(payload_bytes).hexdigest(),
            }
    if payload is not None:
        record["payload"] = payload
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


class DeadLetterWriter:
    """Writes rejected input to the dead-letter topic with its reason."""

    def __init__(self, producer: Producer, settings: KafkaSettings, source: str) -> None:
        self._producer = producer
        self._topic = settings.dead_letter_topic
        self._source = source
        self.written = 0

    def write(
        self,
        reason: str,
        detail: str,
        equipment_id: str = "",
        payload_bytes: bytes | None = None,
        payload: object | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        value = dead_letter_value(self._source, reason, detail, equipment_id, payload_bytes, payload)
        kwargs: dict[str, Any] = {"key": equipment_id.encode(), "value": value}
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                self._producer.produce(self._topic, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self.written += 1

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise RuntimeError(f"{remaining} dead-letter records not acknowledged by Kafka in {timeout}s")
