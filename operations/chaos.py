"""`vigil chaos`: break each part of the pipeline under a steady simulated load (kill it, cut it off, make it
refuse writes), heal it, and count against what the simulator sent what was lost, duplicated or dead-lettered,
and how long recovery took.

One stack, one continuous fleet; the faults follow one another (each: inject it, hold it ``down_s`` (or the
seconds given as ``name:seconds``), heal it, wait until a window that started after the injection is visible,
settle). A fault is a SIGKILL of a service's process group, healed by a restart through the stack, or one of:
- ``edge-kafka-blackhole``: the fault proxy swallows every byte between the edge service and the broker
  (connections stay open, nothing is refused: the clients find out from their timeouts);
- ``clickhouse-refuses-writes``: every insert into Vigil's tables fails with ClickHouse's own TOO_MANY_PARTS
  (the tables' ``parts_to_throw_insert`` set to 1), as a server whose merges fell behind answers;
- ``gateway-clock-skew``: one gateway's clock runs 30 s behind (its sample times, sent_at and clock_ms); the
  windows are still counted in true time, so every sample must land in the window it was really taken in;
- ``kafka-disk-full``: the filesystem of the broker's data fills up (a ballast file); healed as an operator
  would: free the space, restart the broker. The broker's data must be a filesystem of its own: run as root in a
  fresh data dir, vigil chaos mounts a tmpfs of ``chaos.kafka_disk_mb`` there (it stays mounted).
At the end the simulator stops, every gateway drains its disk buffer, and the counts come
from where the data really lands:
- windows: ClickHouse ``window_stats`` read without FINAL, against the (machine, sensor, window) sample
  counts of every batch the simulator handed to its gateway clients (acknowledged or buffered and replayed);
  a window is lost when absent, short when it holds fewer samples than were sent, duplicated when a
  FINAL-free read sees it more than once or it holds more samples than were sent (a batch written twice);
- verdicts: ClickHouse ``anomalies`` (kind ``window``), one per machine and window with statistics;
- dead letters: the dead-letter topic's records of the run, by reason (late data counts here, not as lost).
Losses and duplicates are attributed to the fault whose interval (injection - 2 windows .. recovery + settle)
holds the window's start. Pages (alert publisher, relay, Alertmanager, Prometheus) are not counted here.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
from clickhouse_connect.driver.client import Client
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from connectors.clickhouse import make_client, vigil_tables
from connectors.kafka import make_consumer
from edge.gateway import GatewayClient
from edge.proto import telemetry_pb2
from edge.simulator import runner
from operations.stack import fault_proxy, kafka_broker
from operations.stack.services import FAULT_PROXY, INFRA, PIPELINE, Stack
from vigil.settings import Settings

KILLED = (
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
# How far the gateway-clock-skew fault sets one gateway's clock back (its data then looks 30 s old).
CLOCK_SKEW_MS = 30_000
# Tables the ClickHouse sink writes (a refusal of these is what the sinks must ride out).
SINK_TABLES = ("window_stats", "anomalies", "insights", "machine_state")


@dataclass
class Target:
    """What a fault acts on: the stack, and the fleet's gateways."""

    stack: Stack
    gateways: list[RecordingGateway]


@dataclass(frozen=True)
class Fault:
    """What a fault does and how it is undone."""

    name: str
    kind: str
    inject: Callable[[Target], None]
    heal: Callable[[Target], None]
    hold_s: float | None = None  # how long it lasts by default (None: the run's down_s)
    needs_broker_disk: bool = False  # the broker's data must be on a filesystem of its own (kafka-disk-full)


def _sigkill(service: str) -> Fault:
    return Fault(service, "SIGKILL", lambda t: kill(t.stack, service), lambda t: t.stack.up((service,)))


def _skew_clock(target: Target, skew_ms: int) -> None:
    """The first gateway's clock (its samples, sent_at and clock_ms) runs ``skew_ms`` off the true time."""
    target.gateways[0].skew_ms = skew_ms


BALLAST = "disk-full-ballast"


def fill_filesystem(path: Path, chunk: int = 4 << 20) -> int:
    """Write zeros to ``path`` until its filesystem is full; returns the bytes written."""
    written, block = 0, bytes(chunk)
    with path.open("wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(block)  # a partial write, then ENOSPC on the next
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written


def broker_disk_ready(settings: Settings, console: Console) -> None:
    """Make the broker's data a filesystem of its own (a tmpfs), or say why it cannot be."""
    path = kafka_broker.broker_dir(settings)
    if os.path.ismount(path):
        return
    if path.exists() and any(path.iterdir()):
        raise ValueError(
            f"kafka-disk-full needs the broker's data ({path}) on a filesystem of its own, and it already holds a "
            "broker: use a fresh VIGIL_DATA_DIR (vigil chaos then mounts a tmpfs there) or leave the fault out"
        )
    if os.geteuid() != 0:
        raise ValueError(
            f"kafka-disk-full needs the broker's data ({path}) on a filesystem of its own, else it would fill this "
            f"machine's disk: run vigil chaos as root (it mounts a tmpfs), mount one there yourself "
            f"(mount -t tmpfs -o size=1g tmpfs {path}), or leave the fault out"
        )
    path.mkdir(parents=True, exist_ok=True)
    size = settings.chaos.kafka_disk_mb
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0700", "tmpfs", str(path)], check=True)
    console.print(f"[bold]chaos[/]: the broker's data is a {size} MB tmpfs at {path} (umount it when done)")


def fill_broker_disk(target: Target) -> None:
    path = kafka_broker.broker_dir(target.stack.settings)
    if not os.path.ismount(path):
        raise RuntimeError(f"{path} is not a filesystem of its own: kafka-disk-full would fill the machine's disk")
    fill_filesystem(path / BALLAST)


def free_broker_disk(target: Target) -> None:
    """Free the space, then restart the broker: one whose log dir failed keeps it offline until restarted."""
    (kafka_broker.broker_dir(target.stack.settings) / BALLAST).unlink(missing_ok=True)
    if target.stack.processes.pid("kafka") is not None:
        kill(target.stack, "kafka")
    target.stack.up(("kafka",))


def _sink_tables(settings: Settings) -> list[str]:
    tables = vigil_tables(settings.clickhouse)
    return [f"{tables.database}.{getattr(tables, name)}" for name in SINK_TABLES]


def refuse_writes(target: Target) -> None:
    """Every insert into the sink's tables fails with TOO_MANY_PARTS (each table holds at least one part)."""
    _alter_tables(target.stack.settings, "MODIFY SETTING parts_to_throw_insert = 1")


def accept_writes(target: Target) -> None:
    _alter_tables(target.stack.settings, "RESET SETTING parts_to_throw_insert")


def _alter_tables(settings: Settings, change: str) -> None:
    client = make_client(settings.clickhouse, "admin")
    try:
        for table in _sink_tables(settings):
            client.command(f"ALTER TABLE {table} {change}")
    finally:
        client.close()


FAULTS: dict[str, Fault] = {
    **{service: _sigkill(service) for service in KILLED},
    "edge-kafka-blackhole": Fault(
        "edge-kafka-blackhole",
        "blackhole",
        lambda t: fault_proxy.blackhole(t.stack.settings),
        lambda t: fault_proxy.restore(t.stack.settings),
    ),
    "clickhouse-refuses-writes": Fault(
        "clickhouse-refuses-writes", "refuses writes", refuse_writes, accept_writes, hold_s=60.0
    ),
    "gateway-clock-skew": Fault(
        "gateway-clock-skew",
        "clock 30 s behind",
        lambda t: _skew_clock(t, -CLOCK_SKEW_MS),
        lambda t: _skew_clock(t, 0),
    ),
    "kafka-disk-full": Fault(
        "kafka-disk-full", "disk full", fill_broker_disk, free_broker_disk, hold_s=30.0, needs_broker_disk=True
    ),
}
# Filling the broker's disk needs a filesystem of its own, which only root can mount here.
DEFAULT_FAULTS = tuple(name for name, f in FAULTS.items() if not f.needs_broker_disk or os.geteuid() == 0)


def parse_fault(spec: str) -> tuple[Fault, float | None]:
    """``name`` or ``name:seconds``: the fault, and how long to hold it when given."""
    name, _, seconds = spec.partition(":")
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    try:
        return FAULTS[name], float(seconds) if seconds else None
    except ValueError:
        raise ValueError(f"fault {spec!r}: the part after ':' must be seconds, e.g. {name}:60") from None


def with_edge_route(settings: Settings) -> Settings:
    """``settings`` whose edge reaches the local broker through the fault proxy (ports from chaos settings
    unless set already)."""
    if fault_proxy.routed(settings):
        return settings
    c = settings.chaos
    port = settings.kafka.local_edge_port or c.edge_listener_port
    kafka = settings.kafka.model_copy(update={"local_edge_port": port})
    edge = settings.edge.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{c.edge_proxy_port}"})
    return settings.model_copy(update={"kafka": kafka, "edge": edge})


@dataclass
class FaultResult:
    service: str  # the fault's name: the service killed, or the fault (edge-kafka-blackhole, ...)
    kind: str
    injected_at_ms: int
    held_s: float = 0.0
    healed_at_ms: int = 0
    recovered_at_ms: int | None = None
    # Proof that the fault bit: rows of windows started since the injection that were visible just before
    # healing (None: ClickHouse was the one down), and batches the gateways buffered on disk meanwhile.
    landed_during: int | None = None
    batches_buffered: int = 0
    # The gateways' disk buffers when the fault healed, and heal -> every buffer empty again (None: not in time).
    buffer_bytes: int = 0
    drained_s: float | None = None
    windows_lost: int = 0
    windows_short: int = 0
    windows_duplicated: int = 0
    verdicts_lost: int = 0
    verdicts_duplicated: int = 0

    @property
    def recovery_s(self) -> float | None:
        """Healed (restart, path or writes back) -> first window that started after the injection visible."""
        if self.recovered_at_ms is None:
            return None
        return round((self.recovered_at_ms - self.healed_at_ms) / 1000, 1)


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
    """A gateway client that records what it is handed and, on close, drains its disk buffer first.

    ``skew_ms``: how far the gateway's clock is off; its batches are stamped by that clock (what it records
    stays in true time)."""

    def __init__(self, settings: Settings, index: int, sent: SentWindows, drain_s: float) -> None:
        self.skew_ms = 0
        self.client = GatewayClient(
            settings, gateway_id=f"chaos-gateway-{index}", clock=lambda: int(time.time() * 1000) + self.skew_ms
        )
        self.sent = sent
        self.drain_s = drain_s

    def send(self, batches: Sequence[telemetry_pb2.ReadingBatch]) -> telemetry_pb2.IngestAck | None:
        self.sent.record(batches)
        skew = self.skew_ms
        return self.client.send(_shifted(batches, skew) if skew else batches)

    def buffer_bytes(self) -> int:
        """Bytes of batches waiting in the disk buffer (quarantined ones not counted)."""
        return sum(segment.stat().st_size for segment in self.client.dir.glob("segment-*.log"))

    def close(self) -> None:
        deadline = time.monotonic() + self.drain_s
        while self.client.buffered_batches() and time.monotonic() < deadline:
            if self.client.send([]) is None:
                time.sleep(1.0)
        self.client.close()


def _restart_if_unrouted(stack: Stack) -> None:
    """A broker started without the edge's listener (or an edge not routed through the proxy) is restarted with
    the chaos settings: the run kills them anyway, and a blackhole must cut the edge off, not nobody."""
    config = kafka_broker.broker_dir(stack.settings) / "config" / "server.properties"
    running = config.is_file() and stack.processes.pid("kafka") is not None
    if running and config.read_text() != kafka_broker.server_properties(stack.settings):
        stack.down(("edge", "kafka"))


def _shifted(batches: Sequence[telemetry_pb2.ReadingBatch], skew_ms: int) -> list[telemetry_pb2.ReadingBatch]:
    """Copies of ``batches`` stamped by a clock ``skew_ms`` off."""
    out = []
    for batch in batches:
        copy = telemetry_pb2.ReadingBatch()
        copy.CopyFrom(batch)
        copy.sent_at_ms += skew_ms
        for series in copy.sensors:
            shifted = (np.asarray(series.timestamps_ms, dtype=np.int64) + skew_ms).tolist()
            del series.timestamps_ms[:]
            series.timestamps_ms.extend(shifted)
        out.append(copy)
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def kill(stack: Stack, service: str) -> None:
    """SIGKILL the service's whole process group (a JVM and its Python workers die together, as in a crash)."""
    pid = stack.processes.pid(service)
    if pid is None:
        raise RuntimeError(f"{service} is not running: cannot inject its fault (see `vigil stack status`)")
    os.killpg(pid, signal.SIGKILL)
    stack.processes.stop(service)  # forget the dead process's pid file


def _time_drain(fault: FaultResult, gateways: list[RecordingGateway], timeout_s: float) -> threading.Thread:
    """In the background: heal -> the moment every gateway's disk buffer is empty again."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not any(g.buffer_bytes() for g in gateways):
                fault.drained_s = round((_now_ms() - fault.healed_at_ms) / 1000, 1)
                return
            time.sleep(0.5)

    thread = threading.Thread(target=watch, name="drain-watch", daemon=True)
    thread.start()
    return thread


def _rows_since(client: Client, table: str, since_ms: int) -> int:
    rows = client.query(
        f"SELECT count() FROM {table} WHERE window_start >= fromUnixTimestamp64Milli({{t:Int64}})",
        parameters={"t": since_ms},
    ).result_rows
    return int(rows[0][0]) if rows else 0


def _wait_visible(settings: Settings, table: str, since_ms: int, timeout_s: float) -> int | None:
    """When (epoch ms) a row of ``table`` whose window started at or after ``since_ms`` is visible; None: never."""
    client = make_client(settings.clickhouse, "admin")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if _rows_since(client, table, since_ms):
                return _now_ms()
            time.sleep(0.5)
    finally:
        client.close()
    return None


def _landed_during(settings: Settings, table: str, since_ms: int) -> int | None:
    """Rows of windows started since the injection, just before healing (None: ClickHouse itself is down)."""
    try:
        client = make_client(settings.clickhouse, "admin")
    except Exception:  # noqa: BLE001 - the killed server cannot be asked
        return None
    try:
        return _rows_since(client, table, since_ms)
    except Exception:  # noqa: BLE001
        return None
    finally:
        client.close()


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings.kafka.as_identity("admin"), "vigil-chaos-offsets")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def dead_letters_since(settings: Settings, start: dict[int, int]) -> Counter[str]:
    """Dead-letter records written after ``start`` (partition -> offset), by reason."""
    topic = settings.kafka.dead_letter_topic
    end = _end_offsets(settings, topic)
    consumer = make_consumer(settings.kafka.as_identity("admin"), "vigil-chaos-dead-letters")
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
            until = (fault.recovered_at_ms or fault.healed_at_ms) + int(settle_s * 1000)
            if fault.injected_at_ms - 2 * window_ms <= start_ms <= until:
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
    streams: int | None = None,
) -> ChaosResult:
    plan = [parse_fault(spec) for spec in faults]
    if settings.flink.topology != "split":
        raise ValueError("vigil chaos kills the split topology's jobs: set flink.topology = 'split'")
    settings = with_edge_route(settings)
    if any(fault.needs_broker_disk for fault, _ in plan):
        broker_disk_ready(settings, console)
    stack = Stack(settings)
    console.print("[bold]chaos[/]: starting the stack and pipeline (the edge reaches Kafka through the fault proxy)")
    _restart_if_unrouted(stack)
    stack.up(FAULT_PROXY + INFRA + PIPELINE)
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
            settings=settings,
            machines=machines,
            duration_s=None,
            realtime=True,
            stop=stop,
            make_sender=make_sender,
            streams=streams,
        ),
        daemon=True,
    )
    simulator.start()
    target = Target(stack, gateways)
    console.print(f"[bold]chaos[/]: {machines} machines streaming; warm-up {warmup_s:.0f} s")
    time.sleep(warmup_s)
    for spec, hold in plan:
        held = hold if hold is not None else spec.hold_s if spec.hold_s is not None else down_s
        fault = FaultResult(service=spec.name, kind=spec.kind, injected_at_ms=_now_ms(), held_s=held)
        console.print(f"[bold red]{spec.kind}[/] {spec.name}; healing in {held:.0f} s")
        table = RECOVERY_TABLE.get(spec.name, "window_stats")
        buffered = sum(g.client.buffered for g in gateways)
        spec.inject(target)
        time.sleep(held)
        fault.landed_during = _landed_during(settings, table, fault.injected_at_ms)
        fault.batches_buffered = sum(g.client.buffered for g in gateways) - buffered
        fault.buffer_bytes = sum(g.buffer_bytes() for g in gateways)
        spec.heal(target)
        fault.healed_at_ms = _now_ms()
        drain = _time_drain(fault, gateways, recovery_timeout_s)
        fault.recovered_at_ms = _wait_visible(settings, table, fault.injected_at_ms, recovery_timeout_s)
        drain.join()
        console.print(
            f"  {spec.name}: healed; "
            + (f"recovered in {fault.recovery_s} s" if fault.recovery_s is not None else "NOT recovered")
            + (
                f"; {fault.batches_buffered:,} batches ({fault.buffer_bytes / 1e6:.1f} MB) buffered by the gateways, "
                f"drained in {fault.drained_s} s"
                if fault.batches_buffered
                else ""
            )
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
    columns = ("fault", "held s", "landed meanwhile", "buffered", "recovery s", "windows lost", "short", "duplicated")
    for column in (*columns, "verdicts lost", "dup"):
        table.add_column(column, justify="right" if column != "fault" else "left")
    for f in result.faults:
        table.add_row(
            f"{f.service} ({f.kind})",
            f"{f.held_s:.0f}",
            "n/a" if f.landed_during is None else str(f.landed_during),
            f"{f.batches_buffered} ({f.buffer_bytes / 1e6:.1f} MB)" if f.batches_buffered else "0",
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
            "",
            "",
            "",
            *(
                str(u.get(k, 0))
                for k in ("windows_lost", "windows_short", "windows_duplicated", "verdicts_lost", "verdicts_duplicated")
            ),
        )
    return table
