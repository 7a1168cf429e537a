"""vigil replay's stream: a recording reaches Kafka through a real edge service, every row once, at its pace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.gateway import GatewayClient
from edge.service import serve
from operations.replay import ReplayMachine, read_recording, stream
from tests.conftest import free_port
from tests.integration.test_edge_service import consume_until, per_test_kafka
from vigil.settings import EdgeSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def edge(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(
        data_dir=tmp_path,
        kafka=per_test_kafka(kafka_settings),
        edge=EdgeSettings(port=free_port(), metrics_port=free_port()),
    )
    _, shutdown = serve(settings)
    try:
        yield settings
    finally:
        shutdown(0)


def test_a_recording_streams_through_the_edge_with_its_times_shifted_to_now(edge: Settings, tmp_path: Path) -> None:
    rows = ["datetime;Current;Pressure;anomaly;changepoint"]
    rows += [f"2020-03-09 10:{14 + i // 60:02d}:{i % 60:02d};{1 + i / 10};{i % 3};0;0" for i in range(8)]
    (tmp_path / "1.csv").write_text("\n".join(rows) + "\n")
    rec = read_recording(tmp_path / "1.csv", "skab")
    interval_ms = 1000
    start = (int(time.time() * 1000) // interval_ms + 1) * interval_ms
    machine = ReplayMachine(rec, "skab-1", "replay", "skab_replay", start, speed=4.0)  # 8 rows in 2 s
    ended: list[str] = []
    with GatewayClient(edge, gateway_id="replay-test") as client:
        sent = stream([machine], client, interval_ms, on_done=lambda m: ended.append(m.equipment_id))
    assert ended == ["skab-1"] and machine.done
    assert 2 <= sent <= 4  # one batch per interval boundary with rows due, never a re-send

    records = consume_until(
        edge.kafka, edge.kafka.telemetry_topic, lambda v: sum(len(s["ts"]) for r in v for s in r["sensors"]) >= 16
    )
    got: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        assert (r["equipment_id"], r["site"], r["equipment_type"]) == ("skab-1", "replay", "skab_replay")
        for s in r["sensors"]:
            got.setdefault(s["sensor"], []).extend(zip(s["ts"], s["v"], strict=True))
    times = [start + 250 * i for i in range(8)]
    assert sorted(got["current"]) == [(t, 1 + i / 10) for i, t in enumerate(times)]
    assert sorted(got["pressure"]) == [(t, float(i % 3)) for i, t in enumerate(times)]
