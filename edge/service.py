"""Edge ingestion service: gRPC ``vigil.edge.v1.Ingestion`` -> validation -> Kafka.

Guarantees to gateways:

* An ``IngestAck`` is sent only after Kafka acknowledged (acks=all, idempotent producer) every
  record of the request. If Kafka fails to acknowledge, the call fails with UNAVAILABLE and the
  gateway keeps the batches and retries: nothing acknowledged is ever lost.
* Invalid input is never dropped silently: it goes, with the original bytes and a reason code, to
  the dead-letter topic (unary: INVALID_ARGUMENT; stream: listed in ``IngestAck.rejections``).
* Re-sends are recognised by a high-water mark of acknowledged ``sequence`` numbers per machine and
  authenticated gateway (a gateway numbers its own batches, and another gateway's forged sequence for the
  machine must not make them "duplicates") and acknowledged as ``duplicate_batches`` without being
  re-written; a sequence far past the mark (``edge.max_sequence_jump``) is refused, so one forged batch cannot
  mute a machine's later ones from its own gateway either. The
  marks survive a restart (edge/state.py: a snapshot, completed from the telemetry topic's tail); several
  service replicas do not share them, so a re-send to another replica is written again. ``sequence == 0`` means
  "not set" and is never de-duplicated.

* Only gateways with a certificate the configured CA signed get in (mutual TLS, ``edge.tls``); the certificate's
  common name replaces the batch's ``gateway_id``, and with an equipment registry a gateway may report only for
  the machines it binds to that gateway (``foreign_machine``), whose site and type come from the registry.

Requests are registered with a raw-bytes deserializer so that malformed protobuf reaches our code
(and the dead-letter topic) instead of being rejected inside gRPC.

Run: ``python -m edge.service`` (until SIGTERM/SIGINT). Metrics: Prometheus text format on
``settings.edge.metrics_port`` (0 disables).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from confluent_kafka import KafkaException
from google.protobuf.message import DecodeError
from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from connectors.kafka import DeadLetterWriter, ensure_topics, make_consumer, make_producer
from edge import validation as v
from edge.chunking import batch_to_records
from edge.progress import FleetProgress, ProgressMarkers
from edge.proto import telemetry_pb2
from edge.state import (
    SNAPSHOT_FILE,
    EdgeSnapshot,
    batch_headers,
    load_snapshot,
    mark_key,
    marks_in_kafka,
    save_snapshot,
)
from edge.tls import TlsMaterialMissing, peer_identity, server_credentials
from vigil.logs import setup_logging
from vigil.settings import KafkaSettings, Settings, get_settings
from vigil.signals import stop_event_on_signals

log = logging.getLogger("edge.service")

SERVICE_NAME = telemetry_pb2.DESCRIPTOR.services_by_name["Ingestion"].full_name
SNAPSHOT_INTERVAL_S = 1.0
# librdkafka's default message.timeout.ms: a record may be acknowledged this long after it was produced.
DEFAULT_DELIVERY_TIMEOUT_MS = 300_000
_COMPRESSION = {
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
    "none": grpc.Compression.NoCompression,
}


class DeliveryTracker:
    """Counts outstanding Kafka deliveries of one request; ``wait`` returns once all reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outstanding = 0
        self._sealed = False
        self._finished = False
        self._done = threading.Event()
        # Called once when sealed and every delivery reported (on whichever thread saw it), before ``wait`` returns.
        self.on_done: Callable[[], None] | None = None
        self.errors: list[str] = []
        self.produced = 0

    def expect(self) -> None:
        """Call after each successful ``produce`` (the callback may already have run: that is fine)."""
        with self._lock:
            self._outstanding += 1
            self.produced += 1

    def on_delivery(self, err: object, msg: object) -> None:
        with self._lock:
            self._outstanding -= 1
            if err is not None:
                self.errors.append(str(err))
        self._finish_if_complete()

    def seal(self) -> None:
        """No more records will be produced for this request (idempotent)."""
        with self._lock:
            self._sealed = True
        self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        with self._lock:
            if self._finished or not self._sealed or self._outstanding:
                return
            self._finished = True
        if self.on_done is not None:
            self.on_done()
        self._done.set()

    def wait(self, context: grpc.ServicerContext) -> bool:
        """Wait for all deliveries while the client is still there; False if it went away or timed out."""
        while not self._done.wait(0.2):
            if not context.is_active():
                return False
        return True


class _Metrics:
    """Operator counters, on a private registry so several services can live in one process (tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches = Counter("vigil_edge_batches_accepted", "Batches written to Kafka", registry=r)
        self.points = Counter("vigil_edge_points_accepted", "Sensor samples written to Kafka", registry=r)
        self.records = Counter("vigil_edge_records_produced", "Telemetry records acknowledged", registry=r)
        self.rejected = Counter(
            "vigil_edge_batches_rejected", "Batches dead-lettered, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter("vigil_edge_batches_duplicate", "Re-sent batches not re-written", registry=r)
        # No gateway label: gateway ids come from the batches, so a label would let any client grow the series.
        self.clock_corrected = Counter(
            "vigil_edge_clock_corrected_batches",
            "Batches whose times were moved by their gateway's clock error (edge.clock_tolerance_ms)",
            registry=r,
        )
        self.kafka_failures = Counter(
            "vigil_edge_kafka_delivery_failures", "Requests failed with UNAVAILABLE (Kafka)", registry=r
        )
        self.ack_latency = Histogram(
            "vigil_edge_kafka_ack_seconds",
            "Wait for Kafka to acknowledge a request's records after its last produce",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.throttled = Counter(
            "vigil_edge_calls_throttled", "Calls refused for a gateway over edge.gateway_max_points_per_s", registry=r
        )
        self.in_flight = Gauge("vigil_edge_requests_in_flight", "gRPC requests being processed", registry=r)
        for reason in v.REASON_CODES:  # export zeros so alerts can use rate() from the start
            self.rejected.labels(reason)


@dataclass
class _RequestState:
    """What one gRPC request did so far."""

    tracker: DeliveryTracker
    ack: telemetry_pb2.IngestAck = field(default_factory=telemetry_pb2.IngestAck)
    marks: dict[str, int] = field(default_factory=dict)  # mark_key -> highest sequence written here
    claims: list[tuple[str, int]] = field(default_factory=list)  # (mark_key, sequence) this request writes
    covered: dict[str, int] = field(default_factory=dict)  # equipment -> the promise of its batches here
    produced_any: bool = False
    last_rejection: tuple[str, str] | None = None
    gateway: str | None = None  # the caller's certificate identity (None: TLS off)


EDGE_RECOVERY_GROUP = "vigil-edge-recovery"  # the consumer that re-reads high-water marks at start


def edge_kafka(settings: Settings) -> KafkaSettings:
    """The Kafka connection of the edge (its principal): its own route to the brokers when it has one."""
    kafka = settings.kafka.as_identity("edge")
    route = settings.edge.kafka_bootstrap_servers
    return kafka.model_copy(update={"bootstrap_servers": route}) if route else kafka


class IngestionService:
    """Request handlers; ``serve`` wires them into a gRPC server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.validator = v.BatchValidator(settings.edge)
        self.producer = make_producer(edge_kafka(settings))
        self.dead_letters = DeadLetterWriter(self.producer, settings.kafka, source="edge")
        self.metrics = _Metrics()
        e = settings.edge
        self._rate = RateLimitItemPerSecond(
            e.gateway_max_points_per_s * e.gateway_rate_window_s, e.gateway_rate_window_s
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(e.gateway_rate_storage))
        self._telemetry_topic = settings.kafka.telemetry_topic
        self._window_ms = settings.window.size_ms
        self._marks: dict[str, int] = {}
        # (mark_key, sequence) -> the tracker of the request writing it now: a re-send that arrives while the
        # first copy is still on its way to Kafka (its client gave up waiting) waits for that outcome instead
        # of writing the batch a second time.
        self._writing: dict[tuple[str, int], DeliveryTracker] = {}
        self._clock_warned: dict[str, float] = {}  # gateway -> when its clock error was last logged
        self._marks_lock = threading.Lock()
        self.totals = (0, 0)  # (batches, points) accepted since start, for the periodic log line
        self._stop = threading.Event()
        self.progress = FleetProgress(settings.edge.progress_active_ms)
        self._state_path = settings.edge_state_dir / SNAPSHOT_FILE
        # Until the marks are recovered a re-send could not be recognised: requests are refused (UNAVAILABLE,
        # the gateways keep their batches) and recovery retries until Kafka answers.
        self.ready = threading.Event()
        self._started_ms = int(time.time() * 1000)
        snapshot = load_snapshot(self._state_path)
        if snapshot and snapshot.promises:
            grace_ms = settings.edge.progress_return_grace_ms
            self.progress.restore(snapshot.promises, self._started_ms + grace_ms)
        threading.Thread(target=self._recover, args=(snapshot,), name="edge-recovery", daemon=True).start()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._poller.start()
        self._snapshots = threading.Thread(target=self._snapshot_loop, name="edge-state", daemon=True)
        self._snapshots.start()
        self.markers: ProgressMarkers | None = None
        if settings.edge.progress_interval_ms:
            self.markers = ProgressMarkers(
                self.producer,
                self._telemetry_topic,
                self.progress,
                settings.edge.progress_interval_ms,
                settings.window.allowed_lateness_ms,
            )
            self.markers.start()

    # -- state across restarts (edge/state.py) -------------------------------------------
    def _recover(self, snapshot: EdgeSnapshot | None) -> None:
        """The previous run's marks: the snapshot's, completed from the telemetry topic's tail (Kafka has the
        last word on what was written); then requests are taken."""
        config = edge_kafka(self.settings)
        delivery_ms = int(config.client_config().get("message.timeout.ms", DEFAULT_DELIVERY_TIMEOUT_MS))
        # Whatever was acknowledged after the snapshot was produced at most a delivery timeout before it; with no
        # snapshot, any batch a gateway still buffers (up to its max age) may come back.
        oldest_resend_ms = self._started_ms - int(self.settings.edge.gateway_buffer_max_age_s * 1000) - delivery_ms
        since_ms = snapshot.saved_at_ms - delivery_ms - 5000 if snapshot else oldest_resend_ms
        while not self._stop.is_set():
            consumer = make_consumer(config, group_id=EDGE_RECOVERY_GROUP)
            try:
                recovered = marks_in_kafka(
                    consumer, self._telemetry_topic, max(since_ms, oldest_resend_ms), timeout_s=5
                )
                break
            except (KafkaException, RuntimeError) as exc:
                log.warning("cannot recover the edge's marks from Kafka yet (%s); retrying in 2 s", exc)
            finally:
                consumer.close()
            self._stop.wait(2)
        else:
            return
        with self._marks_lock:
            for eid, seq in (snapshot.marks if snapshot else {}).items():
                self._marks[eid] = max(seq, self._marks.get(eid, 0))
            for eid, seq in recovered.items():
                self._marks[eid] = max(seq, self._marks.get(eid, 0))
            machines = len(self._marks)
        self.ready.set()
        log.info(
            "ready: the marks of %d (gateway, machine) pairs restored (%d from the telemetry topic), "
            "the promises of %d%s",
            machines,
            len(recovered),
            len(snapshot.promises) if snapshot else 0,
            "" if snapshot else f" (no snapshot at {self._state_path})",
        )

    def _refuse_until_ready(self, context: grpc.ServicerContext) -> None:
        if not self.ready.is_set():
            waited = (time.time() * 1000 - self._started_ms) / 1000
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the edge is recovering from Kafka which batches it already wrote ({waited:.0f} s so far); retry",
            )

    def _snapshot_loop(self) -> None:
        """Its own thread: an fsync held up by a busy disk must not hold up Kafka's delivery callbacks."""
        while not self._stop.wait(SNAPSHOT_INTERVAL_S):
            self.save_state()

    def save_state(self) -> None:
        if not self.ready.is_set():  # the marks are not all known yet: keep the previous snapshot
            return
        with self._marks_lock:
            marks = dict(self._marks)
        snapshot = EdgeSnapshot(int(time.time() * 1000), marks, self.progress.promises())
        try:
            save_snapshot(self._state_path, snapshot)
        except OSError as exc:  # the next round tries again; a restart then reads more of Kafka
            log.warning("could not save the edge's state to %s: %s", self._state_path, exc)

    # -- Kafka ----------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        """Serve delivery callbacks continuously; request threads only wait on their tracker."""
        last_report, last = time.monotonic(), (0, 0)
        while not self._stop.is_set():
            self.producer.poll(0.05)
            now = time.monotonic()
            if now - last_report >= 60:
                batches, points = self.totals
                log.info(
                    "last %.0f s: %d batches, %d points accepted (%.0f points/s)",
                    now - last_report,
                    batches - last[0],
                    points - last[1],
                    (points - last[1]) / (now - last_report),
                )
                last, last_report = (batches, points), now

    def _produce(
        self,
        state: _RequestState,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]] | None,
        context: grpc.ServicerContext,
    ) -> None:
        state.produced_any = True
        while True:
            try:
                self.producer.produce(
                    self._telemetry_topic, value, key, headers=headers, on_delivery=state.tracker.on_delivery
                )
                break
            except BufferError:  # local queue full (Kafka unreachable for long): the poll thread drains it
                if not context.is_active():  # the gateway gave up and keeps the batch: stop holding a worker
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the edge's Kafka queue is full; retry later")
                time.sleep(0.01)
        state.tracker.expect()

    def close(self, timeout: float = 10.0) -> None:
        """Flush outstanding records, then stop the poll thread."""
        if self.markers is not None:
            self.markers.stop()
        remaining = self.producer.flush(timeout)
        if remaining:
            log.error("%d Kafka records still unacknowledged at shutdown", remaining)
        self._stop.set()
        self._poller.join(timeout)
        self._snapshots.join(timeout)
        self.save_state()

    # -- one batch ------------------------------------------------------------------------
    def _reject(self, state: _RequestState, raw: bytes, reason: str, detail: str, eid: str, seq: int) -> None:
        state.produced_any = True
        self.dead_letters.write(reason, detail, eid, payload_bytes=raw, on_delivery=state.tracker.on_delivery)
        state.tracker.expect()
        state.ack.rejected_batches += 1
        if len(state.ack.rejections) < self.settings.edge.max_ack_rejections:  # the count says how many in all
            state.ack.rejections.add(equipment_id=eid, sequence=seq, reason=reason, detail=detail)
        state.last_rejection = (reason, detail)
        self.metrics.rejected.labels(reason).inc()
        log.info("rejected batch equipment=%r sequence=%d: %s: %s", eid, seq, reason, detail)

    def _clock_corrected(self, gateway_id: str, error_ms: int, offset_ms: int) -> None:
        """Count a corrected batch; say so in the log once a minute per gateway (bounded: 10,000 gateways)."""
        self.metrics.clock_corrected.inc()
        now = time.monotonic()
        with self._marks_lock:
            last = self._clock_warned.get(gateway_id)
            if (last is not None and now - last < 60) or (last is None and len(self._clock_warned) >= 10_000):
                return
            self._clock_warned[gateway_id] = now
        log.warning(
            "gateway %r: its clock is %.1f s %s the edge's; its batches' times are moved by %+.0f s "
            "(fix the gateway's time sync, NTP)",
            gateway_id[:80],
            abs(error_ms) / 1000,
            "behind" if error_ms > 0 else "ahead of",
            offset_ms / 1000,
        )

    def _new_request(self, context: grpc.ServicerContext) -> _RequestState:
        state = _RequestState(tracker=DeliveryTracker())
        if self.settings.edge.tls:
            state.gateway = peer_identity(context)
            if not state.gateway:  # require_client_auth lets no such call in; refuse rather than trust the batch
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "the gateway's certificate names no gateway (CN)")
        state.tracker.on_done = lambda: self._completed(state)
        return state

    def _is_duplicate(self, state: _RequestState, key: str, seq: int, context: grpc.ServicerContext) -> bool:
        """Whether Kafka already has this batch (``key``: its :func:`mark_key`); else this request claims
        writing it."""
        while True:
            with self._marks_lock:
                if seq <= max(self._marks.get(key, 0), state.marks.get(key, 0)):
                    return True
                other = self._writing.get((key, seq))
                if other is None:
                    self._writing[(key, seq)] = state.tracker
                    state.claims.append((key, seq))
                    return False
            if not other.wait(context):  # an earlier request is writing it: its outcome decides
                context.abort(grpc.StatusCode.CANCELLED, "client went away while an earlier copy was being written")

    def _handle(self, state: _RequestState, raw: bytes, context: grpc.ServicerContext, arrived_ms: int) -> None:
        """Parse, validate, de-duplicate and produce one serialized ReadingBatch."""
        try:
            batch = telemetry_pb2.ReadingBatch.FromString(raw)
        except DecodeError as exc:
            detail = f"request is not a valid vigil.edge.v1.ReadingBatch ({len(raw)} bytes): {exc}"
            self._reject(state, raw, v.MALFORMED_PROTOBUF, detail, "", 0)
            return
        now_ms = int(time.time() * 1000)
        result = self.validator.validate(batch, now_ms, arrived_ms, state.gateway)
        eid, seq = batch.equipment_id, batch.sequence
        if not result.ok:
            assert result.reason is not None
            self._reject(state, raw, result.reason, result.detail, eid, seq)
            return
        gateway = state.gateway or batch.gateway_id
        if not self._limiter.hit(self._rate, gateway, cost=result.points):
            self.metrics.throttled.inc()
            e = self.settings.edge
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"gateway {gateway[:80]!r} is over edge.gateway_max_points_per_s={e.gateway_max_points_per_s} "
                f"(averaged over {e.gateway_rate_window_s} s): keep the batches and retry later",
            )
        # What the batch claims about itself gives way to what the edge knows: the authenticated gateway, and
        # the registry's site and type (the console's access rules key on the site).
        if state.gateway is not None:
            batch.gateway_id = state.gateway
        if (entry := self.validator.registered(eid)) is not None:
            batch.site = entry.site or batch.site
            batch.equipment_type = entry.equipment_type or batch.equipment_type
        if result.clock_offset_ms:
            self._clock_corrected(batch.gateway_id, result.clock_error_ms, result.clock_offset_ms)
        if eid not in state.covered:
            self.progress.attempt_started(eid, now_ms)
        # The gateway's promise (sent_at), never older than what it sent; it reaches the fleet's progress only
        # once Kafka acknowledged the data (``_completed``): a marker must never cover a batch that may yet fail.
        # A duplicate's promise counts too: its sequence is at or below one Kafka acknowledged.
        newest = max((int(a.ts.max()) for a in result.arrays if a.ts.size), default=0)
        sent_at = batch.sent_at_ms + result.clock_offset_ms if batch.sent_at_ms else 0
        state.covered[eid] = max(state.covered.get(eid, 0), sent_at, newest)
        if seq:
            key = mark_key(state.gateway, eid)
            with self._marks_lock:
                mark = max(self._marks.get(key, 0), state.marks.get(key, 0))
            jump = self.settings.edge.max_sequence_jump
            if mark and seq > mark + jump:
                detail = (
                    f"sequence {seq} is {seq - mark} past the last one acknowledged for {eid!r} ({mark}), more than "
                    f"edge.max_sequence_jump={jump}: a gateway that renumbers its batches must continue from its "
                    "last sequence (or send 0: never de-duplicated)"
                )
                self._reject(state, raw, v.SEQUENCE_JUMP, detail, eid, seq)
                return
            if self._is_duplicate(state, key, seq, context):
                state.ack.duplicate_batches += 1
                self.metrics.duplicates.inc()
                return
            state.marks[key] = max(seq, state.marks.get(key, 0))
        records = batch_to_records(batch, result.arrays, self._window_ms, now_ms)
        # No sequence: never de-duplicated.
        headers = batch_headers(seq, len(records), state.gateway) if seq else None
        for key, value in records:
            self._produce(state, key, value, headers, context)
        state.ack.accepted_batches += 1
        state.ack.accepted_points += result.points

    def _finish(self, state: _RequestState, context: grpc.ServicerContext) -> None:
        """Wait for Kafka to acknowledge the request's records; abort with UNAVAILABLE if it did not."""
        tracker = state.tracker
        sealed_at = time.perf_counter()
        tracker.seal()
        if not tracker.wait(context):
            context.abort(grpc.StatusCode.CANCELLED, "client went away before Kafka acknowledged the batches")
        if state.produced_any:
            self.metrics.ack_latency.observe(time.perf_counter() - sealed_at)
        if tracker.errors:
            self.metrics.kafka_failures.inc()
            log.warning("Kafka did not acknowledge %d record(s): %s", len(tracker.errors), tracker.errors[0])
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"Kafka did not acknowledge {len(tracker.errors)} of {tracker.produced} record(s) "
                f"({tracker.errors[0]}); nothing of this request is confirmed, retry later",
            )

    def _completed(self, state: _RequestState) -> None:
        """Every record of the request reported (poll thread, or the request's own): whether or not its client
        is still waiting, what Kafka acknowledged now counts (marks, the fleet's progress) and its claims end."""
        ok = not state.tracker.errors
        now_ms = int(time.time() * 1000)
        with self._marks_lock:
            if ok:
                for eid, seq in state.marks.items():
                    if seq > self._marks.get(eid, 0):
                        self._marks[eid] = seq
                self.totals = (
                    self.totals[0] + state.ack.accepted_batches,
                    self.totals[1] + state.ack.accepted_points,
                )
            for claim in state.claims:
                if self._writing.get(claim) is state.tracker:
                    del self._writing[claim]
        if not ok:
            return
        for eid, covered in state.covered.items():
            self.progress.acknowledged(eid, covered, now_ms)
        self.metrics.batches.inc(state.ack.accepted_batches)
        self.metrics.points.inc(state.ack.accepted_points)
        self.metrics.records.inc(state.tracker.produced - state.ack.rejected_batches)

    def _release(self, state: _RequestState) -> None:
        """The request ended (acknowledged, failed, or the client went away): its machines' attempts end. The
        tracker is sealed in any case, so its records still complete the request when they report."""
        state.tracker.seal()
        now_ms = int(time.time() * 1000)
        for eid in state.covered:
            self.progress.attempt_ended(eid, now_ms)

    # -- gRPC handlers (requests arrive as raw bytes) -------------------------------------
    def ingest(
        self, request: bytes, context: grpc.ServicerContext, arrived_ms: int | None = None
    ) -> telemetry_pb2.IngestAck:
        """``arrived_ms``: when the call reached the server (``ArrivalTime``), before it waited for a worker."""
        arrived_ms = arrived_ms or int(time.time() * 1000)
        self._refuse_until_ready(context)
        with self.metrics.in_flight.track_inprogress():
            state = self._new_request(context)
            try:
                self._handle(state, request, context, arrived_ms)
                self._finish(state, context)
            finally:
                self._release(state)
            if state.last_rejection is not None:
                reason, detail = state.last_rejection
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{reason}: {detail} (sent to dead-letter topic)")
            state.ack.edge_clock_ms = int(time.time() * 1000)
            return state.ack

    def ingest_stream(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext, arrived_ms: int | None = None
    ) -> telemetry_pb2.IngestAck:
        arrived_ms = arrived_ms or int(time.time() * 1000)
        self._refuse_until_ready(context)
        with self.metrics.in_flight.track_inprogress():
            state = self._new_request(context)
            limit, size = self.settings.edge.max_stream_bytes, 0
            try:
                for raw in request_iterator:
                    size += len(raw)
                    if size > limit:  # nothing of this stream is acknowledged: the gateway re-sends it split up
                        context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"stream over edge.max_stream_bytes={limit}: send at most that many bytes per stream",
                        )
                    self._handle(state, raw, context, arrived_ms)
                self._finish(state, context)
            finally:
                self._release(state)
            state.ack.edge_clock_ms = int(time.time() * 1000)  # the gateway measures its clock by it
            return state.ack


class ArrivalTime(grpc.ServerInterceptor):
    """Hands each call's arrival time to its handler, for the check that a gateway's measured clock error is
    consistent with when its call arrived (edge/validation.py).

    gRPC runs interceptors on its serving thread as a call arrives, handlers later on a worker: under load
    (1,000 gateways replaying at once) a call waits seconds for a worker, which is not the gateway's doing."""

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201 - gRPC's signature
        arrived_ms = int(time.time() * 1000)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            behavior = handler.unary_unary
            return handler._replace(unary_unary=lambda request, context: behavior(request, context, arrived_ms))
        if handler.stream_unary is not None:
            behavior = handler.stream_unary
            return handler._replace(stream_unary=lambda requests, context: behavior(requests, context, arrived_ms))
        return handler


def serve(
    settings: Settings | None = None, create_topics: bool = True, ready_wait_s: float = 60.0
) -> tuple[grpc.Server, Callable[..., None]]:
    """Start the service (gRPC + metrics HTTP) in-process; returns the server and ``shutdown(grace=5)``.

    Waits up to ``ready_wait_s`` for the marks to be recovered (then serves anyway, refusing batches until they
    are, so a broker that is down at start does not keep the edge down)."""
    settings = settings or get_settings()
    edge = settings.edge
    if create_topics:
        kafka = edge_kafka(settings)
        ensure_topics(kafka, topics=[kafka.telemetry_topic, kafka.dead_letter_topic])
    service = IngestionService(settings)
    if not service.ready.wait(ready_wait_s):
        log.warning("the edge's marks are not recovered after %.0f s; batches are refused until they are", ready_wait_s)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=edge.max_workers, thread_name_prefix="ingest"),
        interceptors=(ArrivalTime(),),
        maximum_concurrent_rpcs=edge.max_concurrent_rpcs,
        compression=_COMPRESSION[edge.compression],
        options=[
            ("grpc.max_receive_message_length", edge.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    ack_serializer = telemetry_pb2.IngestAck.SerializeToString
    handlers = {
        "Ingest": grpc.unary_unary_rpc_method_handler(
            service.ingest, request_deserializer=None, response_serializer=ack_serializer
        ),
        "IngestStream": grpc.stream_unary_rpc_method_handler(
            service.ingest_stream, request_deserializer=None, response_serializer=ack_serializer
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    address = f"{edge.host}:{edge.port}"
    try:
        credentials = server_credentials(settings) if edge.tls else None
    except TlsMaterialMissing:
        service.close(1)
        raise
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        bound, error = 0, exc
    else:
        error = None
    if not bound:
        service.close(1)
        raise RuntimeError(
            f"cannot listen on {address} ({error or 'bind failed'}); is another edge service running? "
            "Stop it or set VIGIL_EDGE__PORT"
        )
    http = None
    if edge.metrics_port:
        http, _ = start_http_server(edge.metrics_port, addr=edge.host, registry=service.metrics.registry)
    server.start()
    log.info(
        "edge ingestion listening on %s (%s, metrics %s), Kafka %s, topics %s / %s",
        address,
        "mTLS" if credentials else "NO TLS: any client may send",
        f"http://{edge.host}:{edge.metrics_port}/metrics" if http else "off",
        settings.kafka.bootstrap_servers,
        settings.kafka.telemetry_topic,
        settings.kafka.dead_letter_topic,
    )

    def shutdown(grace: float = 5.0) -> None:
        server.stop(grace).wait()
        service.close()
        if http is not None:
            http.shutdown()
            http.server_close()
        log.info("edge ingestion stopped")

    return server, shutdown


def main() -> None:
    """``python -m edge.service``: run until SIGTERM/SIGINT."""
    setup_logging()
    stop = stop_event_on_signals()
    _, shutdown = serve(get_settings())
    stop.wait()
    shutdown()


if __name__ == "__main__":
    main()
