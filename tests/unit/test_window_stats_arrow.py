"""Window-stats JSON -> Arrow: exact values, and malformed records kept aside, never dropped."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pyarrow as pa

from connectors.clickhouse import WINDOW_STATS_ARROW_SCHEMA, window_stats_to_arrow
from vigil.contracts import WINDOW_STATS_MARKER_PREFIX


def record(i: int = 0, **overrides: object) -> dict:
    base = {
        "equipment_id": f"m-{i}",
        "site": "site-a",
        "equipment_type": "compressor",
        "sensor": "temp",
        "unit": "C",
        "window_start_ms": 1_717_000_000_000 + 5000 * i,
        "window_end_ms": 1_717_000_005_000 + 5000 * i,
        "count": 10 + i,
        "avg": 20.5 + i,
        "stddev": 0.25,
        "min": 19.0,
        "max": 22.0,
        "emitted_at_ms": 1_717_000_006_123 + 5000 * i,
    }
    base.update(overrides)
    return base


def encode(*records: dict) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def test_parses_exact_values_into_the_table_schema() -> None:
    table, malformed = window_stats_to_arrow(encode(record(0), record(1)))
    assert malformed == []
    assert table.schema == WINDOW_STATS_ARROW_SCHEMA
    rows = table.to_pylist()
    assert rows[0] == {
        "equipment_id": "m-0",
        "site": "site-a",
        "equipment_type": "compressor",
        "sensor": "temp",
        "unit": "C",
        "window_start": datetime(2024, 5, 29, 16, 26, 40, tzinfo=UTC),
        "window_end": datetime(2024, 5, 29, 16, 26, 45, tzinfo=UTC),
        "count": 10,
        "avg": 20.5,
        "stddev": 0.25,
        "min": 19.0,
        "max": 22.0,
        "emitted_at": datetime(2024, 5, 29, 16, 26, 46, 123000, tzinfo=UTC),
    }
    assert rows[1]["equipment_id"] == "m-1"
    assert rows[1]["count"] == 11
    assert table.column("window_start").cast(pa.int64()).to_pylist() == [1_717_000_000_000, 1_717_000_005_000]


def test_unknown_fields_are_ignored_and_whitespace_newlines_accepted() -> None:
    pretty = orjson.dumps(record(3, extra={"nested": [1, 2]}), option=orjson.OPT_INDENT_2)
    assert b"\n" in pretty
    table, malformed = window_stats_to_arrow([pretty])
    assert malformed == []
    assert table.column("equipment_id").to_pylist() == ["m-3"]


def test_malformed_records_are_separated_with_their_position_and_reason() -> None:
    values = encode(record(0))
    values += [
        b"{not json",  # 1: syntax
        b"",  # 2: empty
        orjson.dumps({k: v for k, v in record(3).items() if k != "sensor"}),  # 3: missing field
        orjson.dumps(record(4, count="ten")),  # 4: wrong type
        orjson.dumps(record(5, count=-1)),  # 5: out of range for UInt32
        orjson.dumps(record(6, window_end_ms=1_717_000_000_000 + 5000 * 6)),  # 6: empty window
        orjson.dumps(record(7, equipment_id="")),  # 7: empty id
        orjson.dumps(record(8)) + orjson.dumps(record(9)),  # 8: two objects in one record
        b"[1, 2]",  # 9: not an object
        orjson.dumps(record(10, avg=None)),  # 10: null statistic
    ]
    values += encode(record(11), record(12))
    table, malformed = window_stats_to_arrow(values)

    assert table.column("equipment_id").to_pylist() == ["m-0", "m-11", "m-12"]
    assert [m.index for m in malformed] == list(range(1, 11))
    assert all(m.value == values[m.index] for m in malformed)  # the original bytes, for the DLQ
    reasons = {m.index: m.detail for m in malformed}
    assert reasons[2] == "empty record"
    assert reasons[3] == "missing or null field 'sensor'"
    assert reasons[5] == "count out of range"
    assert reasons[6] == "window_end_ms <= window_start_ms"
    assert reasons[7] == "empty equipment_id"
    assert reasons[10] == "missing or null field 'avg'"
    for index in (1, 4, 8, 9):
        assert reasons[index].startswith("invalid JSON record")


def test_all_malformed_and_empty_input() -> None:
    table, malformed = window_stats_to_arrow([b"nope", b"{}"])
    assert table.num_rows == 0
    assert table.schema == WINDOW_STATS_ARROW_SCHEMA
    assert [m.index for m in malformed] == [0, 1]
    table, malformed = window_stats_to_arrow([])
    assert (table.num_rows, malformed) == (0, [])


def test_large_batch_with_one_bad_record() -> None:
    values = encode(*(record(i) for i in range(5000)))
    values[4321] = b'{"equipment_id": "m-x", "count": }'
    table, malformed = window_stats_to_arrow(values)
    assert table.num_rows == 4999
    assert [m.index for m in malformed] == [4321]
    ids = table.column("equipment_id").to_pylist()
    assert "m-4321" not in ids
    assert ids[:2] == ["m-0", "m-1"]
    assert ids[-1] == "m-4999"


def test_progress_markers_are_neither_rows_nor_malformed() -> None:
    marker = record(1, equipment_id=f"{WINDOW_STATS_MARKER_PREFIX}3", site="", equipment_type="", sensor="", unit="")
    marker["count"] = 0
    values = encode(record(0), marker) + [b"{not json"] + encode(record(3))
    table, malformed = window_stats_to_arrow(values)
    assert table.column("equipment_id").to_pylist() == ["m-0", "m-3"]
    assert [m.index for m in malformed] == [2]  # positions still those of the batch
    # A record named like a marker but carrying samples is a window (with an empty sensor: malformed).
    fake = dict(marker, count=5)
    table, malformed = window_stats_to_arrow(encode(fake))
    assert table.num_rows == 0 and [m.detail for m in malformed] == ["empty sensor"]
