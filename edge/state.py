"""What the edge service remembers across a restart: which batches Kafka already has, and whom it was serving.

Both live in memory while the service runs. Lost on a crash, they would cost twice:
- a gateway whose batch Kafka acknowledged but whose answer the crash swallowed re-sends it, and a service
  without its high-water marks writes it a second time (its samples counted twice in their window);
- a service that knows no machine starts its progress markers ``progress_active_ms`` after the first one
  reports, and a machine whose replay is still queued behind a thousand others by then is forgotten: the
  watermark passes its buffered windows and its backlog is dead-lettered as late.

So the service snapshots both to ``<state_dir>/edge-state.json`` every second (atomically) and at start
restores them: the marks, completed from the tail of the telemetry topic (Kafka is the record of what was
written; the snapshot only says where to start reading), and the machines' promises, each held for
``progress_return_grace_ms`` so a machine expected back holds the windows open until it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "edge-state.json"
# Record headers of every telemetry record: the batch's sequence and how many records it was written as, so
# a restart can tell a batch wholly in Kafka (a re-send is a duplicate) from one cut short by a failure.
SEQUENCE_HEADER = "vigil-sequence"
PARTS_HEADER = "vigil-parts"
# The authenticated gateway that wrote it (mTLS): sequences are a gateway's own numbering, so the marks are kept
# per (gateway, machine) and one gateway's forged sequence for a machine cannot mute another gateway's batches.
GATEWAY_HEADER = "vigil-gateway"
_KEY_SEPARATOR = "\x1f"  # in no certificate name or equipment id the validator lets through


def mark_key(gateway: str | None, equipment_id: str) -> str:
    """The key of a high-water mark: the machine, under the gateway that numbers its batches (TLS on)."""
    return f"{gateway}{_KEY_SEPARATOR}{equipment_id}" if gateway else equipment_id


@dataclass
class EdgeSnapshot:
    saved_at_ms: int
    marks: dict[str, int] = field(default_factory=dict)  # mark_key -> highest sequence Kafka acknowledged
    promises: dict[str, int] = field(default_factory=dict)  # equipment -> acknowledged promise (sent_at)


def save_snapshot(path: Path, snapshot: EdgeSnapshot) -> None:
    """Write ``snapshot`` so that a crash at any instant leaves the previous or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        handle.write(
            orjson.dumps({"saved_at_ms": snapshot.saved_at_ms, "marks": snapshot.marks, "promises": snapshot.promises})
        )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_snapshot(path: Path) -> EdgeSnapshot | None:
    """The last snapshot, or None when there is none or it cannot be read (said in the log)."""
    try:
        data = orjson.loads(path.read_bytes())
        return EdgeSnapshot(
            saved_at_ms=int(data["saved_at_ms"]),
            marks={str(k): int(v) for k, v in data["marks"].items()},
            promises={str(k): int(v) for k, v in data["promises"].items()},
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning(
            "cannot read the edge's state snapshot %s (%s): starting without it; batches re-sent from before "
            "the lookback are not recognised as duplicates, and machines not heard from in progress_active_ms "
            "stop holding the windows",
            path,
            exc,
        )
        return None


def batch_headers(sequence: int, parts: int, gateway: str | None = None) -> list[tuple[str, bytes]]:
    headers = [(SEQUENCE_HEADER, str(sequence).encode()), (PARTS_HEADER, str(parts).encode())]
    return headers + [(GATEWAY_HEADER, gateway.encode())] if gateway else headers


def marks_in_kafka(consumer: Consumer, topic: str, since_ms: int, timeout_s: float = 30.0) -> dict[str, int]:
    """Highest sequence per :func:`mark_key` among batches written WHOLE to ``topic`` since ``since_ms`` (Kafka
    time).

    Reads every partition from the offset of ``since_ms`` up to its end as of now; a batch counts once all
    its records (``PARTS_HEADER``) are there. Records without the headers (markers, older writers) are
    skipped. Raises RuntimeError when Kafka cannot be read: starting without the marks would write re-sent
    batches twice.
    """
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        raise RuntimeError(f"cannot read topic {topic!r} to recover the edge's marks: {meta and meta.error}")
    wanted = [TopicPartition(topic, p, since_ms) for p in sorted(meta.partitions)]
    starts = consumer.offsets_for_times(wanted, timeout=timeout_s)
    ends: dict[int, int] = {}
    assign: list[TopicPartition] = []
    for tp in starts:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
        if tp.offset >= 0 and tp.offset < high:  # -1: nothing at or after since_ms
            ends[tp.partition] = high
            assign.append(TopicPartition(topic, tp.partition, tp.offset))
    total = sum(ends[tp.partition] - tp.offset for tp in assign)
    parts: Counter[tuple[str, int]] = Counter()
    expected: dict[tuple[str, int], int] = {}
    if assign:
        consumer.assign(assign)
        read, last_log = 0, time.monotonic()
        deadline = time.monotonic() + max(timeout_s, total / 2000)  # a slow broker gets 2,000 records/s
        while ends:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"recovering the edge's marks from {topic!r} took too long ({read} of {total} records read); "
                    "check the broker, then start the edge again"
                )
            for message in consumer.consume(5000, 0.5):
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                read += 1
                headers = dict(message.headers() or ())
                if SEQUENCE_HEADER in headers and message.key():
                    gateway = headers.get(GATEWAY_HEADER)
                    key = mark_key(gateway.decode() if gateway else None, message.key().decode())
                    batch = (key, int(headers[SEQUENCE_HEADER]))
                    parts[batch] += 1
                    expected[batch] = int(headers.get(PARTS_HEADER, b"1"))
                if partition in ends and offset + 1 >= ends[partition]:
                    del ends[partition]
            if time.monotonic() - last_log > 10:
                log.info("recovering the edge's marks: %d of %d records read", read, total)
                last_log = time.monotonic()
        log.info("recovered the edge's marks from %d records of %s", read, topic)
    marks: dict[str, int] = {}
    for (eid, seq), n in parts.items():
        if n >= expected[(eid, seq)] and seq > marks.get(eid, 0):
            marks[eid] = seq
    return marks
