"""Insight records (the agents job's output) into rows of the insights table; bad ones dead-lettered."""

from __future__ import annotations

import orjson

from connectors.clickhouse import INSIGHT_RECORDS, records_to_arrow

GOOD = {
    "equipment_id": "pump-0001",
    "site": "site-1",
    "equipment_type": "pump",
    "agent": "diagnostic",
    "kind": "diagnosis",
    "episode_id": "pump-0001@1000",
    "window_start_ms": 1000,
    "window_end_ms": 6000,
    "closed": True,
    "title": "Sensor stuck (speed), 100% sure",
    "severity": "warning",
    "confidence": 1.0,
    "fault_type": "sensor_stuck",
    "sensors": ["speed"],
    "details": '{"by": "rule"}',
    "emitted_at_ms": 7000,
}


def test_good_and_bad_insights() -> None:
    bad = [
        dict(GOOD, severity="urgent"),
        dict(GOOD, confidence=1.5),
        dict(GOOD, agent=""),
        dict(GOOD, window_end_ms=1000),
        {k: v for k, v in GOOD.items() if k != "title"},
    ]
    shared = dict(GOOD, equipment_id="", kind="shared_cause")  # about a line, not one machine: allowed
    table, malformed = records_to_arrow([orjson.dumps(r) for r in (GOOD, shared, *bad)], INSIGHT_RECORDS)
    assert table.num_rows == 2
    assert table.column("sensors").to_pylist() == [["speed"], ["speed"]]
    assert table.column("closed").to_pylist() == [1, 1]
    assert table.column("window_start").to_pylist()[0].timestamp() == 1.0
    reasons = {m.index: m.detail for m in malformed}
    assert reasons == {
        2: "severity is not one of info, warning, critical",
        3: "confidence outside [0, 1]",
        4: "empty agent",
        5: "window_end_ms <= window_start_ms",
        6: "missing or null field 'title'",
    }
    assert {m.index for m in malformed} == set(range(2, 7))
