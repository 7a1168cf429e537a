"""Gateway-side client of the edge ingestion service, with an on-disk buffer for outages.

A site gateway must not lose readings when the uplink or the edge service is down. ``send``
streams batches over ``IngestStream``; when the service is unreachable (UNAVAILABLE or
DEADLINE_EXCEEDED) the serialized batches are appended to a local buffer and ``None`` is
returned. Every later ``send`` first replays the buffer, oldest first, so the service sees the
batches of one machine in order (and drops re-sends by ``sequence``).

Buffer layout under ``<buffer root>/<gateway_id>/`` (root: ``settings.gateway_buffer_dir``):

* ``segment-<n>.log``: append-only segments of length-prefixed records, each record being a
  16-byte header ``>IIq`` (payload length, CRC-32 of the payload, buffered-at epoch ms) followed
  by the serialized ``ReadingBatch``. A torn tail (crash mid-append) fails the length/CRC check
  and is logged and skipped. Each append is fsync'ed by default (``fsync=True``): the buffer is
  only written during outages, so durability is worth the cost.
* ``expired/expired-<YYYYMMDD>.log``: records older than ``edge.gateway_buffer_max_age_s``, in
  the same format, moved aside (never silently dropped) for manual replay or inspection.
* ``quarantine/``: segments the service refused for a non-retryable reason (e.g. a batch larger
  than the service's message limit), so one bad segment cannot block the buffer forever.

The client measures its clock against the edge's as NTP does: every answer carries the edge's clock
(``IngestAck.edge_clock_ms``), and the offset is that minus the midpoint of the request, uncertain by half the
round trip; the most certain measurement of the last minute is kept, a missing or stale one (the wall clock
stepped against the monotonic one) is taken first with an empty call. Every attempt stamps its batches with
it (``clock_ms``, ``clock_offset_ms``, ``clock_uncertainty_ms``, appended to the serialized bytes: the last
value of a field wins), replays too, so the edge can correct the gateway's clock error even for data buffered
an hour ago, and only when the error is larger than the path's delay could make it look.

One client owns its directory (an exclusive ``flock`` on ``.lock``); use one client per thread.
Counters (``sent``, ``buffered``, ``replayed``, ``expired``, ``quarantined``) are per client object.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import grpc

from edge.proto import telemetry_pb2
from edge.tls import channel_credentials
from vigil.settings import Settings

log = logging.getLogger("edge.gateway")

_HEADER = struct.Struct(">IIq")  # payload length, crc32(payload), buffered_at_ms
_SEGMENT_BYTES = 8 * 1024 * 1024  # start a new segment beyond this size (bounds one replay stream)
# RESOURCE_EXHAUSTED: the edge is at its limit of concurrent calls; buffered and retried like an outage.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
# The wall clock moved this much against the monotonic one: it was stepped, the measured offset is void.
_CLOCK_STEP_MS = 500
_STREAM_METHOD = "/{}/IngestStream".format(telemetry_pb2.DESCRIPTOR.services_by_name["Ingestion"].full_name)
_COMPRESSION = {
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
    "none": grpc.Compression.NoCompression,
}


class _Unreachable(Exception):
    """The service could not be reached (retry later)."""


def encode_record(payload: bytes, buffered_at_ms: int) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload), buffered_at_ms) + payload


def read_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(buffered_at_ms, payload)`` of every intact record of a buffer file, in order."""
    with path.open("rb") as handle:
        data = handle.read()
    pos = 0
    while pos < len(data):
        if pos + _HEADER.size > len(data):
            log.error("%s: torn record header at byte %d, skipping %d bytes", path, pos, len(data) - pos)
            return
        length, crc, buffered_at = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            log.error("%s: corrupt/torn record at byte %d, skipping %d bytes", path, pos, len(data) - pos)
            return
        yield buffered_at, payload
        pos += _HEADER.size + length


def _merge(into: telemetry_pb2.IngestAck, other: telemetry_pb2.IngestAck) -> None:
    into.accepted_batches += other.accepted_batches
    into.accepted_points += other.accepted_points
    into.duplicate_batches += other.duplicate_batches
    into.rejected_batches += other.rejected_batches
    into.rejections.extend(other.rejections)


@dataclass(frozen=True)
class ClockOffset:
    """The edge's clock minus the gateway's, as measured by one exchange."""

    offset_ms: int
    uncertainty_ms: int  # half the round trip: the true offset is within offset_ms +- this
    measured_at: float  # time.monotonic()
    anchor_ms: int  # the gateway clock minus the monotonic clock then: it moves when the clock is stepped


def measure_offset(sent_ms: int, edge_ms: int, received_ms: int, anchor_ms: int) -> ClockOffset:
    midpoint = (sent_ms + received_ms) // 2
    return ClockOffset(edge_ms - midpoint, max(1, (received_ms - sent_ms + 1) // 2), time.monotonic(), anchor_ms)


class GatewayClient:
    """Sends batches to the edge service; buffers them on disk while it is unreachable."""

    def __init__(
        self,
        settings: Settings,
        gateway_id: str = "gateway",
        target: str | None = None,
        buffer_dir: Path | None = None,
        fsync: bool = True,
        clock: Callable[[], int] | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        """``buffer_dir`` overrides ``settings.gateway_buffer_dir``; files go to ``<root>/<gateway_id>``.
        ``clock``: the gateway's clock in epoch ms (default the system clock; a simulator may skew it).
        ``cert_file``/``key_file``: the gateway's TLS identity (default ``edge.gateway_cert_file``/``_key_file``;
        with ``edge.tls`` the edge records the certificate's common name as the gateway, not ``gateway_id``)."""
        credentials = channel_credentials(settings, cert_file, key_file) if settings.edge.tls else None
        self.settings = settings
        self.gateway_id = gateway_id
        self.target = target or f"{settings.edge.host}:{settings.edge.port}"
        self.dir = Path(buffer_dir or settings.gateway_buffer_dir) / gateway_id
        self.fsync = fsync
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.clock_offset: ClockOffset | None = None
        self._sync_after = 0.0  # monotonic; an edge that does not tell its time is asked again only then
        self.sent = self.buffered = self.replayed = self.expired = self.quarantined = 0
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = (self.dir / ".lock").open("a+b")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(
                f"gateway buffer {self.dir} is in use by another GatewayClient; give each client its own gateway_id"
            ) from None
        self._deadline = settings.edge.gateway_deadline_s
        self._max_age_ms = int(settings.edge.gateway_buffer_max_age_s * 1000)
        options = [
            ("grpc.max_send_message_length", settings.edge.max_message_bytes),
            # Reconnect quickly once the service is back (the default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        compression = _COMPRESSION[settings.edge.compression]
        if credentials is not None:
            self._channel = grpc.secure_channel(self.target, credentials, options=options, compression=compression)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options, compression=compression)
        # Batches travel pre-serialized (raw bytes), so buffered ones are replayed byte for byte.
        self._stream = self._channel.stream_unary(
            _STREAM_METHOD, request_serializer=None, response_deserializer=telemetry_pb2.IngestAck.FromString
        )

    # -- public API ------------------------------------------------------------------------
    def send(self, batches: Sequence[telemetry_pb2.ReadingBatch]) -> telemetry_pb2.IngestAck | None:
        """Replay the buffer, then send ``batches``; the ack covers both. ``None`` = buffered for later.

        ``send([])`` only replays the buffer (an empty ack if there was nothing to replay).

        Raises ``grpc.RpcError`` for non-retryable errors of the new batches (a caller bug, e.g. too big).
        """
        payloads = [batch.SerializeToString() for batch in batches]
        with self._lock:
            ack = telemetry_pb2.IngestAck()
            try:
                self._drain(ack)
                if payloads:
                    _merge(ack, self._send_payloads(payloads))
            except _Unreachable as exc:
                if payloads:
                    self._append(payloads)
                    self.buffered += len(payloads)
                    log.warning(
                        "edge service %s unreachable (%s); buffered %d batch(es) in %s",
                        self.target,
                        exc,
                        len(payloads),
                        self.dir,
                    )
                return None
            self.sent += len(payloads)
            return ack

    def buffered_batches(self) -> int:
        """Batches waiting in the on-disk buffer (not counting expired or quarantined ones)."""
        with self._lock:
            return sum(1 for seg in self._segments() for _ in read_records(seg))

    @property
    def counters(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "buffered": self.buffered,
            "replayed": self.replayed,
            "expired": self.expired,
            "quarantined": self.quarantined,
        }

    def close(self) -> None:
        """Close the channel and release the buffer directory (buffered batches stay on disk)."""
        self._channel.close()
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- gRPC ------------------------------------------------------------------------------
    def _anchor_ms(self) -> int:
        return self.clock() - int(time.monotonic() * 1000)

    def _call(self, payloads: list[bytes]) -> telemetry_pb2.IngestAck:
        """One stream; its answer measures the clock (kept when at least as certain, or the last is old)."""
        sent_ms = self.clock()
        try:
            ack = self._stream(iter(payloads), timeout=self._deadline)
        except grpc.RpcError as exc:
            if exc.code() in _RETRYABLE:
                raise _Unreachable(f"{exc.code().name}: {exc.details()}") from exc
            raise
        if ack.edge_clock_ms:
            measured = measure_offset(sent_ms, ack.edge_clock_ms, self.clock(), self._anchor_ms())
            last = self.clock_offset
            if last is None or measured.uncertainty_ms <= last.uncertainty_ms or self._stale(last, 60.0):
                self.clock_offset = measured
        return ack

    def _stale(self, measured: ClockOffset, max_age_s: float) -> bool:
        stepped = abs(self._anchor_ms() - measured.anchor_ms) > _CLOCK_STEP_MS
        return stepped or time.monotonic() - measured.measured_at > max_age_s

    def _send_payloads(self, payloads: list[bytes]) -> telemetry_pb2.IngestAck:
        if self.clock_offset is not None and self._stale(self.clock_offset, 600.0):
            self.clock_offset = None
        if self.clock_offset is None and time.monotonic() >= self._sync_after:
            self._call([])  # an empty call: only the clock is measured
            if self.clock_offset is None:
                self._sync_after = time.monotonic() + 60
        offset = self.clock_offset
        stamp = telemetry_pb2.ReadingBatch(
            clock_ms=self.clock(),
            clock_offset_ms=offset.offset_ms if offset else 0,
            clock_uncertainty_ms=offset.uncertainty_ms if offset else 0,
        ).SerializeToString()
        return self._call([payload + stamp for payload in payloads])

    # -- buffer ----------------------------------------------------------------------------
    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("segment-*.log"))

    def _write(self, handle: BinaryIO, data: bytes) -> None:
        handle.write(data)
        handle.flush()
        if self.fsync:
            os.fsync(handle.fileno())

    def _append(self, payloads: list[bytes]) -> None:
        segments = self._segments()
        if segments and segments[-1].stat().st_size < _SEGMENT_BYTES:
            path = segments[-1]
        else:
            number = int(segments[-1].stem.split("-")[1]) + 1 if segments else 1
            path = self.dir / f"segment-{number:012d}.log"
        now_ms = int(time.time() * 1000)
        with path.open("ab") as handle:
            self._write(handle, b"".join(encode_record(p, now_ms) for p in payloads))

    def _drain(self, ack: telemetry_pb2.IngestAck) -> None:
        """Replay buffered segments oldest first; expired records are moved aside before sending."""
        for segment in self._segments():
            records = list(read_records(segment))
            cutoff = int(time.time() * 1000) - self._max_age_ms
            old = [r for r in records if r[0] < cutoff]
            if old:
                self._expire(segment, old)
                records = [r for r in records if r[0] >= cutoff]
                if records:  # rewrite atomically so a failed replay does not expire them twice
                    tmp = segment.with_suffix(".tmp")
                    with tmp.open("wb") as handle:
                        self._write(handle, b"".join(encode_record(p, ts) for ts, p in records))
                    os.replace(tmp, segment)
            if not records:
                segment.unlink()
                continue
            try:
                _merge(ack, self._send_payloads([p for _, p in records]))
            except grpc.RpcError as exc:  # non-retryable: set the segment aside, keep draining
                quarantine = self.dir / "quarantine"
                quarantine.mkdir(exist_ok=True)
                os.replace(segment, quarantine / segment.name)
                self.quarantined += len(records)
                log.error(
                    "edge service refused buffered segment %s (%s: %s); moved %d batch(es) to %s",
                    segment.name,
                    exc.code().name,
                    exc.details(),
                    len(records),
                    quarantine,
                )
                continue
            segment.unlink()
            self.replayed += len(records)
            log.info("replayed %d buffered batch(es) from %s", len(records), segment.name)

    def _expire(self, segment: Path, old: list[tuple[int, bytes]]) -> None:
        expired_dir = self.dir / "expired"
        expired_dir.mkdir(exist_ok=True)
        path = expired_dir / f"expired-{datetime.now(UTC):%Y%m%d}.log"
        with path.open("ab") as handle:
            self._write(handle, b"".join(encode_record(p, ts) for ts, p in old))
        self.expired += len(old)
        log.warning(
            "%d buffered batch(es) in %s older than %.0f s were not sent; moved to %s",
            len(old),
            segment.name,
            self._max_age_ms / 1000,
            path,
        )
