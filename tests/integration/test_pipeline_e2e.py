"""The whole spine on real servers: simulator -> gRPC edge -> Kafka -> Flink -> ClickHouse + Pushgateway/Prometheus.

The simulated fleet's batches are known before they are sent, so every window statistic the
pipeline produces is checked against numpy over the same samples.
"""

from __future__ import annotations

import math
import time
import uuid
import zlib

import grpc
import numpy as np
import orjson
import pandas as pd
import pytest

from connectors.clickhouse import make_client
from connectors.kafka import make_consumer
from connectors.monitoring import monitoring_session
from edge.gateway import GatewayClient
from edge.proto import telemetry_pb2, telemetry_pb2_grpc
from edge.simulator.fleet import Fleet
from operations.stack.services import Stack
from tests.conftest import edge_channel
from vigil.contracts import WINDOW_STATS_MARKER_PREFIX

pytestmark = pytest.mark.integration

MACHINES = 6
DATA_TICKS = 8
FLUSH_TICKS = 3  # later data that moves the watermark past the checked windows


def samples_frame(batches: list[telemetry_pb2.ReadingBatch]) -> pd.DataFrame:
    frames = [
        pd.DataFrame(
            {
                "equipment_id": batch.equipment_id,
                "sensor": series.sensor,
                "ts": np.asarray(series.timestamps_ms, dtype=np.int64),
                "v": np.asarray(series.values, dtype=np.float64),
            }
        )
        for batch in batches
        for series in batch.sensors
    ]
    return pd.concat(frames, ignore_index=True)


def expected_windows(samples: pd.DataFrame, size_ms: int) -> pd.DataFrame:
    samples = samples.assign(window_start_ms=samples.ts - samples.ts % size_ms)
    grouped = samples.groupby(["equipment_id", "sensor", "window_start_ms"]).v
    return grouped.agg(
        count="count", avg="mean", stddev=lambda v: float(np.std(v.to_numpy())), min="min", max="max"
    ).reset_index()


def poll(check, timeout: float, what: str, interval: float = 0.5):
    """Call ``check`` until it returns something other than None/False (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is not None and last is not False:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last result: {last!r}")


def read_dead_letters(stack: Stack, predicate, timeout: float) -> list[dict]:
    kafka = stack.settings.kafka.as_identity("admin")
    consumer = make_consumer(kafka, f"test-dlq-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([kafka.dead_letter_topic])
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not predicate(found):
            for message in consumer.consume(500, 1.0):
                if message.error() is None:
                    found.append(orjson.loads(message.value()))
    finally:
        consumer.close()
    return found


@pytest.fixture(scope="module")
def streamed(pipeline_stack: Stack):
    """Stream a seeded fleet through the edge service; return the samples sent."""
    settings = pipeline_stack.settings
    fleet = Fleet(MACHINES, sites=2, seed=11, fault_rate_per_machine_hour=0.0)
    size = settings.window.size_ms
    interval = fleet.interval_ms
    first_end = (int(time.time() * 1000) // size) * size - (DATA_TICKS + FLUSH_TICKS + 2) * interval
    data: list[telemetry_pb2.ReadingBatch] = []
    sent: list[telemetry_pb2.ReadingBatch] = []
    with GatewayClient(settings, gateway_id=f"e2e-{uuid.uuid4().hex[:6]}") as client:
        for tick in range(DATA_TICKS + FLUSH_TICKS):
            batches = fleet.tick(first_end + tick * interval)
            ack = client.send(batches)
            assert ack is not None, "edge service unreachable"
            assert ack.rejected_batches == 0, list(ack.rejections)
            assert ack.accepted_batches == len(batches)
            sent.extend(batches)
            if tick < DATA_TICKS:
                data.extend(batches)
    last_data_end = first_end + (DATA_TICKS - 1) * interval
    samples = samples_frame(data)
    expected = expected_windows(samples, size)
    # Only windows wholly covered by the data ticks (the first and last may be partial).
    first_full = first_end - interval + size
    expected = expected[(expected.window_start_ms >= first_full) & (expected.window_start_ms + size <= last_data_end)]
    every_window = expected_windows(samples_frame(sent), size)
    return expected, first_full, last_data_end, every_window


def test_window_statistics_in_clickhouse_are_exact(pipeline_stack: Stack, streamed) -> None:
    expected, first_full, last_end, _ = streamed
    client = make_client(pipeline_stack.settings.clickhouse, "admin")
    query = (
        "SELECT equipment_id, sensor, toUnixTimestamp64Milli(window_start) AS window_start_ms, count, avg, stddev, "
        "min, max FROM window_stats FINAL WHERE window_start >= fromUnixTimestamp64Milli({a:Int64}) "
        "AND window_end <= fromUnixTimestamp64Milli({b:Int64}) AND equipment_id IN {ids:Array(String)}"
    )
    # Only this fleet's machines: other tests write windows of their own into the same table.
    params = {"a": first_full, "b": last_end, "ids": sorted(expected.equipment_id.unique())}

    def rows():
        frame = client.query_df(query, parameters=params)
        return frame if len(frame) >= len(expected) else None

    try:
        got = poll(rows, 120, f"{len(expected)} window rows in ClickHouse")
    except AssertionError as exc:  # say whether records went to the dead-letter topic instead
        ids = set(expected.equipment_id)
        late = read_dead_letters(pipeline_stack, lambda found: False, 10)
        ours = [r for r in late if r.get("equipment_id") in ids]
        raise AssertionError(
            f"{exc}; dead letters of this fleet: {[(r['reason'], r['detail']) for r in ours[:3]]} ({len(ours)} in all)"
        ) from exc
    assert len(got) == len(expected), "one row per (machine, sensor, window), no more"
    merged = expected.merge(got, on=["equipment_id", "sensor", "window_start_ms"], suffixes=("", "_ch"))
    assert len(merged) == len(expected)
    assert (merged["count"] == merged["count_ch"]).all()
    for stat in ("avg", "stddev", "min", "max"):
        np.testing.assert_allclose(merged[f"{stat}_ch"], merged[stat], rtol=1e-9, atol=1e-9, err_msg=stat)
    assert expected["count"].sum() == got["count"].sum()


def test_latest_windows_reach_pushgateway_and_prometheus(pipeline_stack: Stack, streamed) -> None:
    expected, _, _, every_window = streamed
    settings = pipeline_stack.settings
    row = expected.iloc[len(expected) // 2]
    equipment, sensor = row.equipment_id, row.sensor
    client = make_client(settings.clickhouse, "admin")

    def latest_pushed():
        text = monitoring_session(settings).get(f"{settings.prometheus.pushgateway_url}/metrics", timeout=5).text
        prefix = "vigil_window_avg{"
        for line in text.splitlines():
            if line.startswith(prefix) and f'equipment_id="{equipment}"' in line and f'sensor="{sensor}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    def newest_in_clickhouse() -> tuple[int, float] | None:
        rows = client.query(
            "SELECT toUnixTimestamp64Milli(window_start), avg FROM window_stats FINAL "
            "WHERE equipment_id = {e:String} AND sensor = {s:String} ORDER BY window_start DESC LIMIT 1",
            parameters={"e": equipment, "s": sensor},
        ).result_rows
        return rows[0] if rows else None

    def pushed_matches_newest() -> tuple[int, float] | None:
        # Windows may still be arriving: wait until the gauge shows the newest window's value.
        pushed, newest = latest_pushed(), newest_in_clickhouse()
        if pushed is None or newest is None or not math.isclose(pushed, newest[1], rel_tol=1e-9):
            return None
        return newest[0], pushed

    window_start, pushed = poll(pushed_matches_newest, 60, f"vigil_window_avg of {equipment}/{sensor}")
    truth = every_window[
        (every_window.equipment_id == equipment)
        & (every_window.sensor == sensor)
        & (every_window.window_start_ms == window_start)
    ]
    assert len(truth) == 1
    assert math.isclose(pushed, float(truth["avg"].iloc[0]), rel_tol=1e-9), "the gauge equals numpy's mean"

    def scraped():
        response = (
            monitoring_session(settings)
            .get(
                f"{settings.prometheus.prometheus_url}/api/v1/query",
                params={"query": f'vigil_window_avg{{equipment_id="{equipment}",sensor="{sensor}"}}'},
                timeout=5,
            )
            .json()
        )
        result = response["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def scraped_matches():
        value = scraped()
        return value if value is not None and math.isclose(value, pushed, rel_tol=1e-9) else None

    value = poll(scraped_matches, 60, "Prometheus to scrape the pushed value")
    assert math.isclose(value, pushed, rel_tol=1e-9)


def test_bad_batches_get_clear_errors_and_reach_the_dead_letter_topic(pipeline_stack: Stack) -> None:
    settings = pipeline_stack.settings
    now = int(time.time() * 1000)
    tag = uuid.uuid4().hex[:6]

    def batch(equipment_id: str, ts: list[int], values: list[float]) -> telemetry_pb2.ReadingBatch:
        return telemetry_pb2.ReadingBatch(
            equipment_id=equipment_id,
            site="site-1",
            equipment_type="pump",
            gateway_id="test",
            sequence=1,
            sent_at_ms=now,
            sensors=[telemetry_pb2.SensorSeries(sensor="temp", unit="degC", timestamps_ms=ts, values=values)],
        )

    cases = {
        "nan_or_inf": batch(f"bad-nan-{tag}", [now - 100], [float("nan")]),
        "timestamp_in_future": batch(f"bad-future-{tag}", [now + 3_600_000], [1.0]),
        "timestamp_too_old": batch(f"bad-old-{tag}", [now - 30 * 86_400_000], [1.0]),
        "empty_equipment_id": batch("", [now - 100], [1.0]),
    }
    channel = edge_channel(settings)
    stub = telemetry_pb2_grpc.IngestionStub(channel)
    for reason, bad in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.Ingest(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
        assert err.value.details(), reason
    raw = channel.unary_unary("/vigil.edge.v1.Ingestion/Ingest", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff-not-a-protobuf-" + tag.encode(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    wanted = set(cases) | {"malformed_protobuf"}

    def ours(letters: list[dict]) -> set[str]:
        return {
            r["reason"]
            for r in letters
            if tag in r.get("equipment_id", "")
            or tag.encode().hex() in r.get("payload_b64", "")
            or (r["reason"] in ("empty_equipment_id", "malformed_protobuf"))
        }

    letters = read_dead_letters(pipeline_stack, lambda found: wanted <= ours(found), 60)
    assert wanted <= ours(letters)
    for record in letters:
        assert record["detail"], record


def test_records_for_closed_windows_are_dead_lettered_not_dropped(pipeline_stack: Stack, streamed) -> None:
    _, first_full, _, _ = streamed
    settings = pipeline_stack.settings
    late_id = f"late-{uuid.uuid4().hex[:6]}"
    late = telemetry_pb2.ReadingBatch(
        equipment_id=late_id,
        site="site-1",
        equipment_type="pump",
        gateway_id="test",
        sequence=1,
        sent_at_ms=int(time.time() * 1000),
        sensors=[
            telemetry_pb2.SensorSeries(sensor="temp", unit="degC", timestamps_ms=[first_full + 10], values=[42.0])
        ],
    )
    with GatewayClient(settings, gateway_id=f"late-{uuid.uuid4().hex[:6]}") as client:
        ack = client.send([late])
    assert ack is not None and ack.accepted_batches == 1
    letters = read_dead_letters(pipeline_stack, lambda found: any(r.get("equipment_id") == late_id for r in found), 90)
    record = next(r for r in letters if r.get("equipment_id") == late_id)
    assert record["reason"] == "late_record"
    assert record["source"] == "flink"
    payload = orjson.loads(record["payload"])
    assert payload["sensors"][0]["v"] == [42.0]


def test_every_window_gets_exactly_one_verdict_on_the_anomalies_topic(pipeline_stack: Stack, streamed) -> None:
    """The scoring job judges each (machine, window) of the stream once: rules + models -> anomalies topic."""
    expected, first_full, last_end, _ = streamed
    kafka = pipeline_stack.settings.kafka.as_identity("admin")
    ids = set(expected.equipment_id)
    want = set(expected[["equipment_id", "window_start_ms"]].drop_duplicates().itertuples(index=False, name=None))
    consumer = make_consumer(kafka, f"test-verdicts-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([kafka.anomalies_topic])
    verdicts: list[dict] = []

    def covered():
        for message in consumer.consume(1000, 1.0):
            if message.error() is None:
                record = orjson.loads(message.value())
                if record["equipment_id"] in ids and first_full <= record["window_start_ms"] < last_end:
                    verdicts.append(record)
        return want <= {(v["equipment_id"], v["window_start_ms"]) for v in verdicts if v["kind"] == "window"}

    try:
        poll(covered, 120, f"{len(want)} verdicts on {kafka.anomalies_topic}", interval=0.0)
    finally:
        consumer.close()
    keys = [(v["equipment_id"], v["window_start_ms"]) for v in verdicts if v["kind"] == "window"]
    assert set(keys) == want and len(keys) == len(want), "exactly one verdict per (machine, window)"
    for v in verdicts:
        assert v["severity"] in ("normal", "warning", "critical")
        assert v["window_end_ms"] - v["window_start_ms"] == pipeline_stack.settings.window.size_ms
        assert v["is_anomaly"] == (v["severity"] != "normal") and v["is_anomaly"] == bool(v["detectors"])


def test_a_machine_replaying_its_backlog_holds_the_windows_open(pipeline_stack: Stack) -> None:
    """A gateway cut off for a few seconds replays its buffer while another machine streams on: the replayed
    windows land whole instead of being dead-lettered as late (the watermark follows the edge's progress
    markers, which wait for every machine heard from recently, not the newest data)."""
    settings = pipeline_stack.settings
    size, tag = settings.window.size_ms, uuid.uuid4().hex[:6]
    # A live machine on every partition (the producer's default partitioner: CRC-32 of the key): a partition's
    # watermark follows its own records, and the source's is the oldest of them, so only when every partition
    # has fresher data could the live machines' data overtake the held one's.
    partitions = settings.kafka.partitions
    by_partition = {zlib.crc32(f"live-{tag}-{n}".encode()) % partitions: f"live-{tag}-{n}" for n in range(64)}
    assert len(by_partition) == partitions
    live_ids, held_id = sorted(by_partition.values()), f"held-{tag}"
    step = 1000  # one batch per second, 10 samples each

    def batch(equipment_id: str, sequence: int, end_ms: int) -> telemetry_pb2.ReadingBatch:
        ts = [end_ms - step + 100 * (i + 1) for i in range(10)]
        return telemetry_pb2.ReadingBatch(
            equipment_id=equipment_id,
            site="site-1",
            equipment_type="pump",
            gateway_id=f"gw-{equipment_id}",
            sequence=sequence,
            sent_at_ms=end_ms,
            sensors=[telemetry_pb2.SensorSeries(sensor="temp", unit="degC", timestamps_ms=ts, values=[1.0] * 10)],
        )

    start = int(time.time() * 1000) // step * step
    backlog: list[telemetry_pb2.ReadingBatch] = []
    with (
        GatewayClient(settings, gateway_id=f"live-{tag}") as live,
        GatewayClient(settings, gateway_id=f"held-{tag}") as held,
    ):
        # Cut off for two windows (10 s): less than edge.progress_active_ms, so it still holds the progress.
        for i in range(1, 2 * size // step + 1):
            end = start + i * step
            time.sleep(max(0.0, (end - time.time() * 1000) / 1000))
            assert live.send([batch(e, i, end) for e in live_ids]) is not None
            if i == 1:
                assert held.send([batch(held_id, i, end)]) is not None  # heard from once, then cut off
            else:
                backlog.append(batch(held_id, i, end))
        ack = held.send(backlog)  # back: the buffered batches, oldest first
        assert ack is not None and ack.accepted_batches == len(backlog)
        for i in range(2 * size // step + 1, 4 * size // step + 1):  # both stream on, closing the windows
            end = start + i * step
            time.sleep(max(0.0, (end - time.time() * 1000) / 1000))
            assert live.send([batch(e, i, end) for e in live_ids]) is not None
            assert held.send([batch(held_id, i, end)]) is not None
    # Every window the cut-off held wholly: from the first full one to the reconnection.
    first, last = (start // size + 1) * size, (start + 2 * size) // size * size
    client = make_client(settings.clickhouse, "admin")

    def counts() -> dict[int, int] | None:
        rows = client.query(
            "SELECT toUnixTimestamp64Milli(window_start), count FROM window_stats"
            " WHERE equipment_id = {e:String} AND window_start >= fromUnixTimestamp64Milli({a:Int64})"
            " AND window_start < fromUnixTimestamp64Milli({b:Int64})",
            parameters={"e": held_id, "a": first, "b": last},
        ).result_rows
        got = dict(rows)
        return got if len(got) == (last - first) // size else None

    try:
        got = poll(counts, 90, f"the held machine's windows {first}..{last} in ClickHouse")
    except AssertionError as exc:
        late = [
            r for r in read_dead_letters(pipeline_stack, lambda found: False, 5) if r.get("equipment_id") == held_id
        ]
        raise AssertionError(f"{exc}; its dead letters: {[(r['reason'], r['detail']) for r in late[:2]]}") from exc
    assert got == {w: size // step * 10 for w in range(first, last, size)}, "every sample of every window"


def test_every_partition_of_the_window_stats_topic_gets_a_progress_marker_per_window(
    pipeline_stack: Stack, streamed
) -> None:
    """The scoring job's source is never idle: each closed window sends a marker to every partition (keys from
    the Kafka client's own partitioner hash), so its watermark moves where no machine's key lands."""
    _, first_full, last_end, _ = streamed
    kafka = pipeline_stack.settings.kafka.as_identity("admin")
    consumer = make_consumer(kafka, f"test-markers-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([kafka.window_stats_topic])
    seen: dict[int, set[int]] = {}

    def complete() -> bool:
        for message in consumer.consume(1000, 1.0):
            if message.error() is None and (message.key() or b"").startswith(WINDOW_STATS_MARKER_PREFIX.encode()):
                record = orjson.loads(message.value())
                assert record["count"] == 0 and record["sensor"] == "", record
                seen.setdefault(record["window_start_ms"], set()).add(message.partition())
        return any(first_full <= w < last_end and len(p) == kafka.partitions for w, p in seen.items())

    try:
        poll(complete, 60, "markers on every partition for one of the stream's windows", interval=0.0)
    finally:
        consumer.close()
    assert all(p <= set(range(kafka.partitions)) for p in seen.values())
