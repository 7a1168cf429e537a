"""`vigil job submit --target cluster`: the same jobs through `flink run` on a standalone cluster.

The cluster jobs read the shared telemetry topic with their own consumer groups and write to their
own output topics, so they run beside the stack's local-mode jobs without disturbing them. The
scoring job (Python UDF workers on the task manager) reads the cluster window-stats job's output.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import pytest

from connectors.kafka import ensure_topics, make_consumer
from edge.gateway import GatewayClient
from edge.proto import telemetry_pb2
from operations.stack import kafka_security
from operations.stack.flink_cluster import kill_taskmanagers, start_cluster, start_taskmanager, stop_cluster, submit
from operations.stack.services import Stack
from tests.conftest import free_port
from vigil.settings import FlinkSettings, Settings

pytestmark = pytest.mark.integration


def read_records(kafka, topic: str, group: str, key, keep, want: int, timeout: float = 120) -> dict:
    """Records of ``topic`` that ``keep`` accepts, by ``key``, until ``want`` of them (or the timeout)."""
    consumer = make_consumer(kafka.as_identity("admin"), group)
    consumer.subscribe([topic])
    found: dict = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(found) < want:
            for message in consumer.consume(100, 1.0):
                if message.error() is None and keep(record := orjson.loads(message.value())):
                    found[key(record)] = record
    finally:
        consumer.close()
    return found


def cluster_settings(base: Settings, tag: str) -> Settings:
    """The stack's settings with topics, consumer groups and a REST port of the cluster's own."""
    kafka = base.kafka.model_copy(
        update={"window_stats_topic": f"cluster-{tag}.window-stats", "anomalies_topic": f"cluster-{tag}.anomalies"}
    )
    flink = FlinkSettings(
        rest_port=free_port(),
        rpc_port=free_port(),
        parallelism=1,
        checkpoint_interval_ms=2000,
        consumer_group=f"cluster-{tag}",
        jars_dir=base.jars_dir,
    )
    scoring = base.scoring.model_copy(update={"consumer_group": f"cluster-{tag}-scoring"})
    return base.model_copy(update={"kafka": kafka, "flink": flink, "scoring": scoring})


def sender(settings: Settings, machine: str) -> Callable[[int, int, int], np.ndarray]:
    size = settings.window.size_ms

    def send(first: int, windows: int, sequence: int) -> np.ndarray:
        """``windows`` windows of 4-Hz samples from ``first`` for eight machines (so that every Kafka
        partition moves its watermark: the tests run without idleness)."""
        ts = first + np.arange(0, windows * size, 250, dtype=np.int64)
        batches = [
            telemetry_pb2.ReadingBatch(
                equipment_id=f"{machine}-{k}" if k else machine,
                site="site-1",
                equipment_type="pump",
                gateway_id="cluster-test",
                sequence=sequence,
                sensors=[
                    telemetry_pb2.SensorSeries(
                        sensor="temp",
                        unit="degC",
                        timestamps_ms=ts.tolist(),
                        values=(np.sin(ts / 1000.0) * 10 + 20).tolist(),
                    )
                ],
            )
            for k in range(8)
        ]
        with GatewayClient(settings, gateway_id=f"{machine}-gw") as client:
            ack = client.send(batches)
        assert ack is not None and ack.accepted_batches == len(batches)
        return ts

    return send


@pytest.fixture
def cluster(pipeline_stack: Stack) -> Iterator[tuple[Settings, str]]:
    """A standalone cluster of its own running the window-stats job: (its settings, its tag)."""
    tag = uuid.uuid4().hex[:6]
    settings = cluster_settings(pipeline_stack.settings, tag)
    ensure_topics(settings.kafka.as_identity("admin"))
    kafka_security.apply(settings)  # the flink principal's ACLs for this cluster's own topics and groups
    try:
        start_cluster(settings)
        assert submit(settings, "window-stats", target="cluster", detach=True) == 0
        yield settings, tag
    finally:
        stop_cluster(settings)


def test_job_submitted_with_flink_run_computes_windows(cluster: tuple[Settings, str]) -> None:
    settings, tag = cluster
    assert submit(settings, "anomaly-scoring", target="cluster", detach=True) == 0

    machine = f"cluster-{tag}"
    size = settings.window.size_ms
    start = (int(time.time() * 1000) // size) * size - 7 * size
    send = sender(settings, machine)
    ts = send(start, 4, 1)  # 3 full windows and a flush one
    values = np.sin(ts / 1000.0) * 10 + 20

    windows = read_records(
        settings.kafka,
        settings.kafka.window_stats_topic,
        f"reader-{tag}",
        lambda r: r["window_start_ms"],
        lambda r: r["equipment_id"] == machine,
        want=3,
    )
    assert len(windows) >= 3, f"cluster job produced {len(windows)} windows for {machine}"
    for window_start, record in windows.items():
        inside = values[(ts >= window_start) & (ts < window_start + size)]
        assert record["count"] == inside.size
        assert record["avg"] == pytest.approx(inside.mean(), rel=1e-12)
        assert record["stddev"] == pytest.approx(inside.std(), rel=1e-9)

    # The scoring job judges a window once the next one reached every partition: two more windows of data
    # move every watermark on whatever the timing of the first batch was (the first two verdicts are due).
    send(start + 4 * size, 2, 2)
    verdicts = read_records(
        settings.kafka,
        settings.kafka.anomalies_topic,
        f"verdicts-{tag}",
        lambda r: r["window_start_ms"],
        lambda r: r["equipment_id"] == machine and r["kind"] == "window",
        want=2,
    )
    assert sorted(verdicts)[:2] == [start, start + size], f"verdicts for {machine}: {sorted(verdicts)}"
    assert all(v["severity"] in ("normal", "warning", "critical") for v in verdicts.values())


def test_a_killed_taskmanager_is_replaced_and_every_window_lands_once(cluster: tuple[Settings, str]) -> None:
    """SIGKILL the cluster's only TaskManager mid-stream, start a new one: the job restarts from its last
    checkpoint, its open Kafka transactions are aborted, and a read_committed reader sees every window exactly
    once with every sample, also those sent while no TaskManager ran."""
    settings, tag = cluster
    machine = f"cluster-tm-{tag}"
    size = settings.window.size_ms
    start = (int(time.time() * 1000) // size) * size - 9 * size
    send = sender(settings, machine)
    ts = [send(start, 4, 1)]

    def windows(want: int, linger_s: float = 0.0) -> list[dict]:
        """Every record of the machine's windows (duplicates kept), once ``want`` distinct windows are in and
        ``linger_s`` after that (a duplicate would be written right after the original)."""
        consumer = make_consumer(settings.kafka.as_identity("admin"), f"reader-{uuid.uuid4().hex[:6]}")
        consumer.subscribe([settings.kafka.window_stats_topic])
        records: list[dict] = []
        deadline, complete_at = time.monotonic() + 180, None
        try:
            while time.monotonic() < deadline:
                for message in consumer.consume(100, 1.0):
                    record = orjson.loads(message.value()) if message.error() is None else {}
                    if record.get("equipment_id") == machine and record["count"] > 0:
                        records.append(record)
                if complete_at is None and len({r["window_start_ms"] for r in records}) >= want:
                    complete_at = time.monotonic()
                if complete_at is not None and time.monotonic() - complete_at >= linger_s:
                    break
        finally:
            consumer.close()
        return records

    assert len(windows(3)) >= 3  # the job runs and has written windows (and checkpointed: every 2 s)
    time.sleep(3)
    assert kill_taskmanagers(settings), "no TaskManager process to kill"
    ts.append(send(start + 4 * size, 3, 2))  # while no TaskManager runs
    start_taskmanager(settings)
    ts.append(send(start + 7 * size, 2, 3))
    every = np.concatenate(ts)
    expected = {w: int(((every >= w) & (every < w + size)).sum()) for w in range(start, start + 8 * size, size)}
    got = windows(len(expected), linger_s=5)
    starts = sorted(r["window_start_ms"] for r in got if r["window_start_ms"] in expected)
    assert starts == sorted(expected), f"windows once each: {starts}"
    assert {r["window_start_ms"]: r["count"] for r in got if r["window_start_ms"] in expected} == expected
