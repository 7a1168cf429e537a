"""Fleet progress markers: close a window as soon as every machine has sent its data for it.

Event-time watermarks advance only with newer data. Machines report a batch every few seconds, so the
batch that completes window [E-5 s, E) holds no sample at or after E, and the window would close only
when the NEXT batch pushes event time past E + allowed lateness: a whole batch interval of latency.

A gateway's ``sent_at_ms`` is a promise: everything it sampled before that instant is in this batch or an
earlier one. The edge keeps each machine's newest promise; the fleet's progress is the oldest promise among
machines heard from recently. Written to every partition of the telemetry topic after the data it covers
(one producer keeps per-partition order), it lets Flink's watermark reach E the moment the last machine's
batch for E is in. A marker is a telemetry record with no machine and no samples, whose event time is the
progress plus the allowed lateness (the source subtracts that again); the window SQL ignores it.

With markers on, they alone move the watermark (sql/flink/window_stats/02_telemetry_source.sql): data
never does. So machines that replay a backlog after an outage of the edge or the broker hold the windows
open until each has caught up (a promise counts only once Kafka acknowledged its data), instead of the
first machine back pushing the watermark past everyone else's buffered hour. A machine silent for
``active_ms`` stops holding the fleet; what it sends later for windows already closed is late.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
from confluent_kafka import KafkaException, Producer

from vigil.contracts import MARKER_GATEWAY

log = logging.getLogger(__name__)


class FleetProgress:
    """Each machine's newest acknowledged promise and when it was last heard from; thread-safe.

    A machine is heard from when a valid batch of it arrives and when that request ends, whatever the outcome,
    and stays active while a request of it is in flight. So a broker outage, in which gateways keep trying and
    nothing is acknowledged, holds every machine at its last acknowledged promise; only a machine that stops
    trying (the gateway is down, or out of reach) is released after ``active_ms``.
    """

    def __init__(self, active_ms: int) -> None:
        self.active_ms = active_ms
        # Until every machine has had time to report once, an unknown machine's batch could still be on its way
        # for a window the markers would close: no markers for ``active_ms`` after the first machine (again
        # after a fleet-wide silence).
        self.first_seen_ms: int | None = None
        # The newest promise of a machine that went silent: once no machine is active, it is the progress, so a
        # fleet's last windows close even when nothing follows them (a burst of data, then silence).
        self.released_ms: int | None = None
        self._covered: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def _heard(self, equipment_id: str, now_ms: int) -> None:
        if self.first_seen_ms is None:
            self.first_seen_ms = now_ms
        self._seen[equipment_id] = now_ms

    def attempt_started(self, equipment_id: str, now_ms: int) -> None:
        """A valid batch of the machine arrived; it is active until ``attempt_ended`` and ``active_ms`` after."""
        with self._lock:
            self._heard(equipment_id, now_ms)
            self._in_flight[equipment_id] = self._in_flight.get(equipment_id, 0) + 1

    def attempt_ended(self, equipment_id: str, now_ms: int) -> None:
        """The request ended, acknowledged or not (its client may have given up before Kafka answered)."""
        with self._lock:
            left = self._in_flight.get(equipment_id, 0) - 1
            if left > 0:
                self._in_flight[equipment_id] = left
            else:
                self._in_flight.pop(equipment_id, None)
            self._heard(equipment_id, now_ms)

    def acknowledged(self, equipment_id: str, covered_until_ms: int, now_ms: int) -> None:
        """Kafka acknowledged the machine's data sampled before ``covered_until_ms`` (only then: a marker must
        never cover data that may still be lost)."""
        with self._lock:
            self._heard(equipment_id, now_ms)
            if covered_until_ms > self._covered.get(equipment_id, -1):
                self._covered[equipment_id] = covered_until_ms

    def update(self, equipment_id: str, covered_until_ms: int, now_ms: int) -> None:
        """One acknowledged request, start to end."""
        self.attempt_started(equipment_id, now_ms)
        self.acknowledged(equipment_id, covered_until_ms, now_ms)
        self.attempt_ended(equipment_id, now_ms)

    def promises(self) -> dict[str, int]:
        """The acknowledged promise of every machine still holding the fleet (for the edge's snapshot)."""
        with self._lock:
            return {eid: covered for eid, covered in self._covered.items() if eid in self._seen}

    def restore(self, promises: dict[str, int], until_ms: int) -> None:
        """Machines a previous run was serving, expected back: each holds the fleet at its promise until it is
        heard from again (then the usual rules apply) or until ``until_ms``."""
        with self._lock:
            for eid, covered in promises.items():
                self._covered[eid] = max(covered, self._covered.get(eid, covered))
                self._seen[eid] = max(self._seen.get(eid, 0), until_ms - self.active_ms)

    def low_watermark(self, now_ms: int) -> int | None:
        """Oldest promise among active machines (when none is: the newest promise of those that fell silent);
        None while warming up, before any promise, or while an active machine has none acknowledged yet."""
        horizon = now_ms - self.active_ms
        with self._lock:
            gone = [eid for eid, seen in self._seen.items() if seen < horizon and eid not in self._in_flight]
            for eid in gone:  # silent machines stop holding the fleet back
                covered = self._covered.pop(eid, None)
                if covered is not None:
                    self.released_ms = max(self.released_ms or covered, covered)
                del self._seen[eid]
            warming = self.first_seen_ms is not None and self.first_seen_ms > horizon
            if not self._seen:
                self.first_seen_ms = None  # the next machine to report starts a new warm-up
                return None if warming else self.released_ms
            if warming or self.first_seen_ms is None or len(self._covered) < len(self._seen):
                return None
            return min(self._covered.values())


def marker_value(progress_ms: int, lateness_ms: int, now_ms: int) -> bytes:
    """A telemetry record without machine or samples whose watermark (event time - lateness) is ``progress_ms``."""
    event_ms = progress_ms + lateness_ms
    return orjson.dumps(
        {
            "equipment_id": "",
            "site": "",
            "equipment_type": "",
            "gateway_id": MARKER_GATEWAY,
            "sequence": 0,
            "chunk_start_ms": event_ms,
            "event_time_ms": event_ms,
            "ingested_at_ms": now_ms,
            "sensors": [],
        }
    )


class ProgressMarkers:
    """Writes the fleet's progress to every partition of the telemetry topic every ``interval_ms``."""

    def __init__(
        self, producer: Producer, topic: str, progress: FleetProgress, interval_ms: int, lateness_ms: int
    ) -> None:
        self.producer, self.topic, self.progress = producer, topic, progress
        self.interval_s, self.lateness_ms = interval_ms / 1000, lateness_ms
        self.last_sent: int | None = None
        self.markers_written = 0
        self._partitions: list[int] = []
        self._partitions_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-markers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def partitions(self) -> list[int]:
        """The topic's partitions, re-read every minute (a topic may grow)."""
        if not self._partitions or time.monotonic() - self._partitions_at > 60:
            meta = self.producer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                self._partitions, self._partitions_at = sorted(meta.partitions), time.monotonic()
        return self._partitions

    def emit(self, now_ms: int | None = None) -> int | None:
        """Write one marker per partition if the progress moved; returns the progress written (or None)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        low = self.progress.low_watermark(now_ms)
        if low is None or (self.last_sent is not None and low <= self.last_sent):
            return None
        value = marker_value(low, self.lateness_ms, now_ms)
        partitions = self.partitions()
        for partition in partitions:
            self.producer.produce(self.topic, value, partition=partition)
        self.markers_written += len(partitions)
        self.last_sent = low
        return low

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.emit()
            except (KafkaException, BufferError) as exc:  # the next round tries again; data is unaffected
                log.warning("could not write progress markers to %s: %s", self.topic, exc)
