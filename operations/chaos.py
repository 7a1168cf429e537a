"""`vigil chaos`: kill each part of the pipeline under a steady simulated load, restart it, and count
against what the simulator sent what was lost, duplicated or dead-lettered, and how long recovery took.

One stack, one continuous fleet; the faults follow one another (each: SIGKILL of the service's process
group, ``down_s`` without it, restart through the stack, wait until a window that started after the kill is
visible, settle). At the end the simulator stops, every gateway drains its disk buffer, and the counts come
from where the data really lands:
- windows: ClickHouse ``window_stats`` read without FINAL, against the (machine, sensor, window) sample
  counts of every batch the simulator handed to its gateway clients (acknowledged or buffered and replayed);
  a window is lost when absent, short when it holds fewer samples than were sent, duplicated when a
  FINAL-free read sees it more than once or it holds more samples than were sent (a batch written twice);
- verdicts: ClickHouse ``anomalies`` (kind ``window``), one per machine and window with statistics;
- dead letters: the dead-letter topic's records of the run, by reason (late data counts here, not as lost).
Losses and duplicates are attributed to the fault whose interval (kill - 2 windows .. recovery + settle)
holds the window's start. Pages (alert publisher, relay, Alertmanager, Prometheus) are not counted here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from connectors.clickhouse import make_client
from connectors.kafka import make_consumer
from edge.gateway import GatewayClient
from edge.proto import telemetry_pb2
from edge.simulator import runner
from operations.stack.services import INFRA, PIPELINE, Stack
from vigil.settings import Settings

DEFAULT_FAULTS = (
    "kafka",
    "clickhouse",
    "edge",
    "window-stats-job",
    "anomaly-scoring-job",
    "clickhouse-sink",
    "pushgateway-sink",
)
# Where a fault's recovery shows: the table a restarted service's work lands in.
RECOVERY_TABLE = {"anomaly-scoring-job": "anomalies"}


@dataclass
class FaultResult:
    service: str
    killed_at_ms: int
    restarted_at_ms: int = 0
    recovered_at_ms: int | None = None
    windows_lost: int = 0
    windows_short: int = 0
    windows_duplicated: int = 0
    verdicts_lost: int = 0
    verdicts_duplicated: int = 0

    @property
    def recovery_s(self) -> float | None:
        """Restart -> first window that started after the kill visible in ClickHouse."""
        if self.recovered_at_ms is None:
            return None
        return round((self.recovered_at_ms - self.restarted_at_ms) / 1000, 1)


@dataclass
class ChaosResult:
    machines: int
    started_at: str
    windows_expected: int = 0
    verdicts_expected: int = 0
    faults: list[FaultResult] = field(default_factory=list)
    unattributed: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    gateway_buffered: int = 0
    gateway_replayed: int = 0

    def as_dict(self) -> dict:
        out = asdict(self)
        for fault, row in zip(self.faults, out["faults"], strict=True):
            row["recovery_s"] = fault.recovery_s
        return out


class SentWindows:
    """Sample counts per (machine, sensor, window start) of every batch handed to a gateway client."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.counts: Counter[tuple[str, str, int]] = Counter()
        self._lock = threading.Lock()

    def record(self, batches: Sequence[telemetry_pb2.ReadingBatch]) -> None:
        local: Counter[tuple[str, str, int]] = Counter()
        for batch in batches:
            for series in batch.sensors:
                starts, n = np.unique(np.asarray(series.timestamps_ms) // self.window_ms, return_counts=True)
                for start, count in zip(starts.tolist(), n.tolist(), strict=True):
                    local[(batch.equipment_id, series.sensor, start * self.window_ms)] += count
        with self._lock:
            self.counts.update(local)


class RecordingGateway:
    """A gateway client that records what it is handed and, on close, drains its disk buffer first."""

    def __init__(self, settings: Settings, index: int, sent: SentWindows, drain_s: float) -> None:
        self.client = GatewayClient(settings, gateway_id=f"chaos-gateway-{index}")
        self.sent = sent
        self.drain_s = drain_s

    def send(self, batches: Sequence[telemetry_pb2.ReadingBatch]) -> telemetry_pb2.IngestAck | None:
        self.sent.record(batches)
        return self.client.send(batches)

    def close(self) -> None:
        deadline = time.monotonic() + self.drain_s
        while self.client.buffered_batches() and time.monotonic() < deadline:
            if self.client.send([]) is None:
                time.sleep(1.0)
        self.client.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def kill(stack: Stack, service: str) -> None:
    """SIGKILL the service's whole process group (a JVM and its Python workers die together, as in a crash)."""
    pid = stack.processes.pid(service)
    if pid is None:
        raise RuntimeError(f"{service} is not running: cannot inject its fault (see `vigil stack status`)")
    os.killpg(pid, signal.SIGKILL)
    stack.processes.stop(service)  # forget the dead process's pid file


def _wait_visible(settings: Settings, table: str, since_ms: int, timeout_s: float) -> int | None:
    """When (epoch ms) a row of ``table`` whose window started at or after ``since_ms`` is visible; None: never."""
    client = make_client(settings.clickhouse, "admin")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            rows = client.query(
                f"SELECT count() FROM {table} WHERE window_start >= fromUnixTimestamp64Milli({{t:Int64}})",
                parameters={"t": since_ms},
            ).result_rows
            if rows and rows[0][0]:
                return _now_ms()
            time.sleep(0.5)
    finally:
        client.close()
    return None


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings.kafka, "vigil-chaos-offsets")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def dead_letters_since(settings: Settings, start: dict[int, int]) -> Counter[str]:
    """Dead-letter records written after ``start`` (partition -> offset), by reason."""
    topic = settings.kafka.dead_letter_topic
    end = _end_offsets(settings, topic)
    consumer = make_consumer(settings.kafka, "vigil-chaos-dead-letters")
    reasons: Counter[str] = Counter()
    try:
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in end])
        remaining = {p for p in end if end[p] > start.get(p, 0)}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=1.0):
                if message.error() is not None:
                    continue
                reasons[orjson.loads(message.value()).get("reason", "?")] += 1
                if message.offset() + 1 >= end[message.partition()]:
                    remaining.discard(message.partition())
    finally:
        consumer.close()
    return reasons


def landed(settings: Settings, since_ms: int) -> tuple[dict[tuple[str, str, int], tuple[int, int]], Counter]:
    """Windows in ClickHouse since ``since_ms`` without FINAL: key -> (copies, samples of the newest copy), and
    (machine, window) -> verdict copies."""
    client = make_client(settings.clickhouse, "admin")
    try:
        windows = client.query(
            "SELECT equipment_id, sensor, toUnixTimestamp64Milli(window_start) AS w, count(),"
            " argMax(count, inserted_at) FROM window_stats WHERE window_start >= fromUnixTimestamp64Milli({t:Int64})"
            " GROUP BY equipment_id, sensor, w",
            parameters={"t": since_ms},
        ).result_rows
        verdicts = client.query(
            "SELECT equipment_id, toUnixTimestamp64Milli(window_start) AS w, count() FROM anomalies"
            " WHERE kind = 'window' AND window_start >= fromUnixTimestamp64Milli({t:Int64}) GROUP BY equipment_id, w",
            parameters={"t": since_ms},
        ).result_rows
    finally:
        client.close()
    return {(m, s, int(w)): (int(c), int(n)) for m, s, w, c, n in windows}, Counter(
        {(m, int(w)): int(c) for m, w, c in verdicts}
    )


def _attribute(faults: list[FaultResult], window_ms: int, settle_s: float) -> Callable[[int], FaultResult | None]:
    def owner(start_ms: int) -> FaultResult | None:
        for fault in faults:
            until = (fault.recovered_at_ms or fault.restarted_at_ms) + int(settle_s * 1000)
            if fault.killed_at_ms - 2 * window_ms <= start_ms <= until:
                return fault
        return None

    return owner


def run_chaos(
    settings: Settings,
    machines: int,
    faults: Sequence[str],
    console: Console,
    warmup_s: float = 60.0,
    down_s: float = 10.0,
    settle_s: float = 30.0,
    recovery_timeout_s: float = 240.0,
) -> ChaosResult:
    unknown = set(faults) - set(DEFAULT_FAULTS)
    if unknown:
        raise ValueError(f"unknown fault target(s) {sorted(unknown)}; known: {', '.join(DEFAULT_FAULTS)}")
    if settings.flink.topology != "split":
        raise ValueError("vigil chaos kills the split topology's jobs: set flink.topology = 'split'")
    stack = Stack(settings)
    console.print("[bold]chaos[/]: starting the stack and pipeline")
    stack.up(INFRA + PIPELINE)
    window_ms = settings.window.size_ms
    dead_letter_start = _end_offsets(settings, settings.kafka.dead_letter_topic)
    started_ms = (_now_ms() // window_ms + 1) * window_ms  # the first whole window the fleet fills
    result = ChaosResult(machines=machines, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    sent = SentWindows(window_ms)
    gateways: list[RecordingGateway] = []

    def make_sender(index: int):
        gateway = RecordingGateway(settings, index, sent, drain_s=recovery_timeout_s)
        gateways.append(gateway)
        return gateway.send

    stop = threading.Event()
    simulator = threading.Thread(
        target=runner.run_simulation,
        kwargs=dict(
            settings=settings, machines=machines, duration_s=None, realtime=True, stop=stop, make_sender=make_sender
        ),
        daemon=True,
    )
    simulator.start()
    console.print(f"[bold]chaos[/]: {machines} machines streaming; warm-up {warmup_s:.0f} s")
    time.sleep(warmup_s)
    for service in faults:
        fault = FaultResult(service=service, killed_at_ms=_now_ms())
        console.print(f"[bold red]kill -9[/] {service}; restarting in {down_s:.0f} s")
        kill(stack, service)
        time.sleep(down_s)
        stack.up((service,))
        fault.restarted_at_ms = _now_ms()
        table = RECOVERY_TABLE.get(service, "window_stats")
        fault.recovered_at_ms = _wait_visible(settings, table, fault.killed_at_ms, recovery_timeout_s)
        console.print(
            f"  {service}: restarted; "
            + (f"recovered in {fault.recovery_s} s" if fault.recovery_s is not None else "NOT recovered")
        )
        result.faults.append(fault)
        time.sleep(settle_s)
    console.print("[bold]chaos[/]: stopping the fleet; gateways drain their buffers")
    stopped_ms = _now_ms()
    stop.set()
    simulator.join(recovery_timeout_s + 60)
    result.gateway_buffered = sum(g.client.buffered for g in gateways)
    result.gateway_replayed = sum(g.client.replayed for g in gateways)
    # The last windows close only when newer data moves the watermark past them: the fleet has stopped, so
    # windows within two windows + the allowed lateness of the stop are not counted.
    cutoff = stopped_ms - 2 * window_ms - settings.window.allowed_lateness_ms
    expected = {k: n for k, n in sent.counts.items() if started_ms <= k[2] < cutoff}
    console.print(f"[bold]chaos[/]: waiting for the last {len(expected):,} windows to land")
    deadline = time.monotonic() + recovery_timeout_s
    while True:
        windows, verdicts = landed(settings, started_ms)
        missing = sum(1 for k in expected if k not in windows)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    time.sleep(2 * settings.clickhouse.flush_interval_s + 2)
    windows, verdicts = landed(settings, started_ms)
    owner = _attribute(result.faults, window_ms, settle_s)

    def count(key_start: int, attr: str) -> None:
        fault = owner(key_start)
        if fault is None:
            result.unattributed[attr] = result.unattributed.get(attr, 0) + 1
        else:
            setattr(fault, attr, getattr(fault, attr) + 1)

    for key, samples in expected.items():
        copies, landed_samples = windows.get(key, (0, 0))
        if copies == 0:
            count(key[2], "windows_lost")
        elif landed_samples < samples:
            count(key[2], "windows_short")
        if copies > 1 or landed_samples > samples:  # a second row, or a batch's samples counted twice
            count(key[2], "windows_duplicated")
    machine_windows = {(m, w) for m, _, w in expected}
    for key in machine_windows:
        copies = verdicts.get(key, 0)
        if copies == 0:
            count(key[1], "verdicts_lost")
        elif copies > 1:
            count(key[1], "verdicts_duplicated")
    result.windows_expected = len(expected)
    result.verdicts_expected = len(machine_windows)
    result.dead_letters = dict(dead_letters_since(settings, dead_letter_start))
    return result


def results_table(result: ChaosResult) -> Table:
    table = Table(
        title=f"vigil chaos: {result.machines} machines, {result.windows_expected:,} windows, "
        f"{result.verdicts_expected:,} verdicts expected"
    )
    for column in ("fault (SIGKILL)", "recovery s", "windows lost", "short", "duplicated", "verdicts lost", "dup"):
        table.add_column(column, justify="right" if column != "fault (SIGKILL)" else "left")
    for f in result.faults:
        table.add_row(
            f.service,
            "not recovered" if f.recovery_s is None else f"{f.recovery_s:.1f}",
            str(f.windows_lost),
            str(f.windows_short),
            str(f.windows_duplicated),
            str(f.verdicts_lost),
            str(f.verdicts_duplicated),
        )
    if result.unattributed:
        u = result.unattributed
        table.add_row(
            "(between faults)",
            "",
            *(
                str(u.get(k, 0))
                for k in ("windows_lost", "windows_short", "windows_duplicated", "verdicts_lost", "verdicts_duplicated")
            ),
        )
    return table
