"""Drive a :class:`~edge.simulator.fleet.Fleet` in real time or as fast as possible.

Each tick's batches are split into ``streams`` contiguous chunks (machines are laid out site by
site, so a chunk is mostly one site's gateway) and sent concurrently, one worker thread per
stream, each with its own sender from ``make_sender(i)`` -- typically
``GatewayClient(settings, gateway_id=...).send``. A worker sends its chunks in tick order, so a
machine's sequence numbers reach the edge in order.

At most one tick is in flight: tick N+1 is generated while tick N is being sent, and is handed
over only once tick N is done, so a slow edge slows the simulation instead of queueing batches
without bound. In real time a late tick is reported (``TickStats.lag_s``, ``behind_schedule``);
more than ``MAX_LAG_INTERVALS`` behind, the runner skips ahead to the clock and counts the
skipped ticks rather than drifting.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.proto import telemetry_pb2
from edge.simulator.fleet import Fleet
from edge.simulator.ground_truth import GroundTruthWriter

if TYPE_CHECKING:
    from vigil.settings import Settings

log = logging.getLogger(__name__)

Sender = Callable[[Sequence[telemetry_pb2.ReadingBatch]], object]
MAX_LAG_INTERVALS = 2  # real time: further behind than this, skip ticks to catch up with the clock


@dataclass
class TickStats:
    tick: int  # 0-based tick number in this run (skipped ticks count)
    end_ms: int  # the tick covers (end_ms - interval, end_ms]
    batches: int
    points: int
    faults_active: int  # ground-truth faults affecting this tick
    generate_s: float  # CPU seconds (this thread) to simulate the tick and build its protobufs
    send_s: float  # wall seconds from hand-over until every stream had sent its chunk
    lag_s: float  # real time: how long after end_ms the batches were handed over; 0 in fast mode
    behind_schedule: bool  # real time: handed over more than one interval late
    skipped_ticks: int  # real time: ticks dropped just before this one to catch up with the clock
    send_errors: int = 0  # batches whose send raised
    accepted_batches: int = 0  # from the senders' acks (IngestAck), when they return one
    rejected_batches: int = 0
    duplicate_batches: int = 0
    unacknowledged_batches: int = 0  # sender returned None (e.g. buffered by the gateway for later)
    errors: list[str] = field(default_factory=list)  # first error message per failing stream


@dataclass
class SimulationSummary:
    ticks: int = 0
    batches: int = 0
    points: int = 0
    send_errors: int = 0
    accepted_batches: int = 0
    rejected_batches: int = 0
    duplicate_batches: int = 0
    unacknowledged_batches: int = 0
    skipped_ticks: int = 0
    late_ticks: int = 0
    max_lag_s: float = 0.0
    generate_s_total: float = 0.0
    generate_s_max: float = 0.0
    wall_s: float = 0.0
    faults: int = 0  # distinct ground-truth faults that affected the run
    first_end_ms: int | None = None
    last_end_ms: int | None = None

    def add(self, t: TickStats) -> None:
        self.ticks += 1
        self.batches += t.batches
        self.points += t.points
        self.send_errors += t.send_errors
        self.accepted_batches += t.accepted_batches
        self.rejected_batches += t.rejected_batches
        self.duplicate_batches += t.duplicate_batches
        self.unacknowledged_batches += t.unacknowledged_batches
        self.skipped_ticks += t.skipped_ticks
        self.late_ticks += int(t.behind_schedule)
        self.max_lag_s = max(self.max_lag_s, t.lag_s)
        self.generate_s_total += t.generate_s
        self.generate_s_max = max(self.generate_s_max, t.generate_s)
        if self.first_end_ms is None:
            self.first_end_ms = t.end_ms
        self.last_end_ms = t.end_ms


class _Pending:
    """One tick being sent by the stream workers."""

    def __init__(self, stats: TickStats, parts: int) -> None:
        self.stats = stats
        self._left = parts
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._t0 = time.perf_counter()
        if parts == 0:
            self._done.set()

    def record(self, n: int, ack: object, error: BaseException | None) -> None:
        s = self.stats
        with self._lock:
            if error is not None:
                s.send_errors += n
                s.errors.append(f"{type(error).__name__}: {error}")
            elif ack is None:
                s.unacknowledged_batches += n
            else:
                s.accepted_batches += int(getattr(ack, "accepted_batches", 0))
                s.rejected_batches += int(getattr(ack, "rejected_batches", 0))
                s.duplicate_batches += int(getattr(ack, "duplicate_batches", 0))
            self._left -= 1
            if self._left == 0:
                s.send_s = time.perf_counter() - self._t0
                self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class _SendPool:
    """One thread per stream, each owning its sender; chunks are sent in submission order."""

    def __init__(self, senders: list[Sender]) -> None:
        self._queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in senders]
        self._threads = [
            threading.Thread(target=self._work, args=(sender, q), name=f"sim-stream-{i}", daemon=True)
            for i, (sender, q) in enumerate(zip(senders, self._queues, strict=True))
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _work(sender: Sender, q: queue.SimpleQueue[Any]) -> None:
        while (item := q.get()) is not None:
            chunk, pending = item
            try:
                ack = sender(chunk)
            except Exception as exc:  # a failed send is counted and reported, the run goes on
                pending.record(len(chunk), None, exc)
            else:
                pending.record(len(chunk), ack, None)

    def submit(self, batches: list[telemetry_pb2.ReadingBatch], stats: TickStats) -> _Pending:
        n, k = len(batches), len(self._queues)
        bounds = [n * i // k for i in range(k + 1)]
        parts = [(i, batches[bounds[i] : bounds[i + 1]]) for i in range(k) if bounds[i + 1] > bounds[i]]
        pending = _Pending(stats, len(parts))
        for i, chunk in parts:
            self._queues[i].put((chunk, pending))
        return pending

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()


def _close_sender(sender: Sender) -> None:
    """Close the client behind a bound ``client.send`` we created (releases its gRPC channel)."""
    close = getattr(getattr(sender, "__self__", None), "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("closing sender %r failed", sender)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def run_simulation(
    settings: Settings,
    send: Sender | None = None,
    machines: int | None = None,
    duration_s: float | None = None,
    realtime: bool = True,
    start_ms: int | None = None,
    streams: int | None = None,
    on_tick: Callable[[TickStats], None] | None = None,
    stop: threading.Event | None = None,
    *,
    make_sender: Callable[[int], Sender] | None = None,
    fleet: Fleet | None = None,
) -> SimulationSummary:
    """Simulate ``machines`` machines for ``duration_s`` seconds (None: until ``stop`` is set).

    Give either ``send`` (one callable shared by all streams: it must be thread-safe) or
    ``make_sender(stream_index)`` (one sender per stream; if it is a bound method of an object
    with ``close()``, that object is closed at the end). Real time: a tick every
    ``batch_interval_s`` aligned to the wall clock, each generated once its interval has passed.
    Fast mode: consecutive ticks from ``start_ms`` (default: so the run ends now) as fast as the
    senders take them. Faults go to ``settings.ground_truth_path`` unless a prepared ``fleet``
    (with its own ground-truth writer, or none) is passed.
    """
    if (send is None) == (make_sender is None):
        raise ValueError("pass exactly one of send (shared, thread-safe) or make_sender (one per stream)")
    if realtime and start_ms is not None:
        raise ValueError("start_ms only applies to fast mode (realtime=False); real time follows the clock")
    stop = stop or threading.Event()
    n_streams = streams or settings.simulator.streams
    writer = None
    if fleet is None:
        writer = GroundTruthWriter(settings.ground_truth_path)
        fleet = Fleet.from_settings(settings, machines=machines, ground_truth=writer)
    interval = fleet.interval_ms
    n_ticks = None if duration_s is None else max(1, math.ceil(duration_s * 1000 / interval - 1e-9))
    if realtime:
        end = (_now_ms() // interval + 1) * interval
    elif start_ms is not None:
        end = int(start_ms) + interval
    else:
        aligned = _now_ms() // interval * interval
        end = aligned - (n_ticks - 1) * interval if n_ticks else aligned + interval

    senders = [send] * n_streams if send is not None else [make_sender(i) for i in range(n_streams)]
    pool = _SendPool(senders)
    summary = SimulationSummary()
    seen_faults: set[tuple[str, int, str]] = set()
    t_start = time.perf_counter()

    def finish(p: _Pending) -> None:
        p.wait()
        st = p.stats
        if st.send_errors:
            log.warning(
                "tick ending %d: %d of %d batches failed to send: %s",
                st.end_ms,
                st.send_errors,
                st.batches,
                "; ".join(st.errors[:3]),
            )
        summary.add(st)
        if on_tick is not None:
            on_tick(st)

    pending: _Pending | None = None
    tick = 0
    try:
        while (n_ticks is None or tick < n_ticks) and not stop.is_set():
            skipped = 0
            if realtime:
                if pending is not None and pending.wait(max(0.0, (end - _now_ms()) / 1000)):
                    finish(pending)
                    pending = None
                wait_ms = end - _now_ms()
                if wait_ms > 0 and stop.wait(wait_ms / 1000):
                    break
                behind = _now_ms() - end
                if behind > MAX_LAG_INTERVALS * interval:
                    skipped = behind // interval
                    if n_ticks is not None:
                        skipped = min(skipped, n_ticks - tick - 1)
                    end += skipped * interval
                    tick += skipped
                    log.warning(
                        "simulator fell %.1f s behind the clock; skipped %d ticks (fewer machines or "
                        "streams, or a faster edge, would keep up)",
                        behind / 1000,
                        skipped,
                    )
            cpu0 = time.thread_time()
            # sent_at is a promise (edge/progress.py): everything sampled before it is in this batch or an earlier
            # one. A tick handed over late covers samples up to ``end`` only: the wall clock would promise the
            # next tick's samples too, and the fleet's progress would close their window before they arrive.
            batches = fleet.tick(end, sent_at_ms=min(_now_ms(), end))
            gen_s = time.thread_time() - cpu0
            lag_s = max(0.0, (_now_ms() - end) / 1000) if realtime else 0.0
            for label in fleet.last_labels:
                seen_faults.add((label.machine, label.start_ms, label.fault_type))
            stats = TickStats(
                tick=tick,
                end_ms=end,
                batches=len(batches),
                points=fleet.last_points,
                faults_active=len(fleet.last_labels),
                generate_s=gen_s,
                send_s=0.0,
                lag_s=lag_s,
                behind_schedule=lag_s * 1000 > interval,
                skipped_ticks=skipped,
            )
            if stats.behind_schedule:
                log.warning("tick ending %d handed over %.1f s late", end, lag_s)
            if pending is not None:
                finish(pending)
            pending = pool.submit(batches, stats)
            end += interval
            tick += 1
        if pending is not None:
            finish(pending)
            pending = None
    finally:
        pool.close()
        if make_sender is not None:
            for s in senders:
                _close_sender(s)
        if writer is not None:
            writer.close()
    summary.faults = len(seen_faults)
    summary.wall_s = time.perf_counter() - t_start
    return summary
