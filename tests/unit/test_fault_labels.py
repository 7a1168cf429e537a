"""Fault-label files (`vigil labels import`): the simulator's ground truth and a plant's work-order CSV."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from operations.training.fault_labels import LabelFileError, read_label_file


def test_work_orders_become_labels_with_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "work_orders.csv"
    path.write_text(
        "equipment_id,fault_type,start,end,site,sensors\n"
        "pump-0007,bearing_wear,2026-11-02T08:00:00Z,2026-11-02T10:30:00Z,site-1,vibration_rms;bearing_temp\n"
        "fan-0002,overheating,2026-11-03 12:00,2026-11-03 12:45,site-2,\n"
    )
    labels = read_label_file(path)
    assert list(labels["diagnosis"]) == ["bearing_wear", "overheating"]
    assert list(labels["start_ms"]) == [1793606400000, 1793707200000]  # 2026-11-02 08:00 / 11-03 12:00 UTC
    assert list(labels["end_ms"] - labels["start_ms"]) == [9_000_000, 2_700_000]
    assert labels["sensors"][0] == ["vibration_rms", "bearing_temp"] and labels["sensors"][1] == []
    assert set(labels["source"]) == {"work_order"} and list(labels["site"]) == ["site-1", "site-2"]
    assert list(read_label_file(path)["label_id"]) == list(labels["label_id"])  # same content, same id
    assert labels["label_id"].nunique() == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("equipment_id,fault_type,start\npump-1,bearing_wear,2026-11-02\n", r"columns \['end'\] missing"),
        ("equipment_id,fault_type,start,end\npump-1,valve_stuck,2026-11-02,2026-11-03\n", "not a diagnostic class"),
        ("equipment_id,fault_type,start,end\npump-1,overheating,2026-11-03,2026-11-02\n", "row 2: end is not after"),
    ],
)
def test_bad_work_orders_are_refused_with_the_reason(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(LabelFileError, match=message):
        read_label_file(path)


def test_simulator_ground_truth_maps_to_the_agents_classes(tmp_path: Path) -> None:
    rows = [
        {
            "machine": "pump-0001",
            "site": "site-1",
            "equipment_type": "pump",
            "sensors": ["vibration_rms"],
            "fault_type": "degradation",
            "start_ms": 1000,
            "end_ms": 9000,
            "params": {},
        },
        {
            "machine": "pump-0002",
            "site": "site-1",
            "equipment_type": "pump",
            "sensors": ["flow"],
            "fault_type": "dropout",
            "start_ms": 2000,
            "end_ms": 5000,
            "params": {"probability": 1.0},
        },
    ]
    path = tmp_path / "ground_truth.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    labels = read_label_file(path)
    assert list(labels["diagnosis"]) == ["bearing_wear", "sensor_dead"]  # a one-sensor dropout: a dead sensor
    assert list(labels["fault_type"]) == ["degradation", "dropout"] and set(labels["source"]) == {"simulator"}
    path.write_bytes(b'{"machine": "x"}\n')
    with pytest.raises(LabelFileError, match="ground_truth.jsonl:1: not a simulator fault label"):
        read_label_file(path)
