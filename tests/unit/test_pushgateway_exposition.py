"""Exact Prometheus text exposition produced by the Pushgateway sink (no servers needed)."""

from __future__ import annotations

import orjson
import pytest

from jobs.pushgateway_sink import PushgatewaySink, escape_label_values, format_values, grouping_path
from tests.conftest import free_port
from vigil.contracts import WINDOW_STATS_MARKER_PREFIX
from vigil.settings import Settings

NOW = 1_700_000_100.0  # wall clock used for every render (seconds)


def record(
    equipment_id: str,
    sensor: str,
    end_s: float,
    avg: float,
    *,
    site: str = "plant-a",
    equipment_type: str = "pump",
    unit: str = "C",
    max_: float = 0.0,
) -> bytes:
    end_ms = int(end_s * 1000)
    return orjson.dumps(
        {
            "equipment_id": equipment_id,
            "site": site,
            "equipment_type": equipment_type,
            "sensor": sensor,
            "unit": unit,
            "window_start_ms": end_ms - 5000,
            "window_end_ms": end_ms,
            "count": 5,
            "avg": avg,
            "stddev": 0.25,
            "min": -1.0,
            "max": max_,
            "emitted_at_ms": end_ms + 1,
        }
    )


@pytest.fixture
def sink(tmp_path) -> PushgatewaySink:
    settings = Settings(
        data_dir=tmp_path,
        prometheus={"exported_stats": ["avg", "max"], "series_ttl_s": 600, "machine_silent_after_s": 60},
    )
    return PushgatewaySink(settings, clock=lambda: NOW)


def test_exact_exposition_with_escaping_and_latest_window(sink: PushgatewaySink) -> None:
    sink.ingest(
        [
            record('m"1', "temp", NOW - 10, 1.5, max_=2.0),
            record('m"1', "temp", NOW - 15, 99.0, max_=99.0),  # older window arrives later: ignored
            record('m"1', "vib\\x", NOW - 10, 0.1 + 0.2, unit="mm/s\nrms", max_=float("nan")),  # JSON null
            record("m2", "temp", NOW - 100, -3.0, equipment_type="fan"),  # silent > 60 s, < TTL
        ]
    )
    texts = sink.render()
    assert list(texts) == ["plant-a"]
    assert texts["plant-a"] == (
        "# HELP vigil_window_avg Mean of the sensor over the machine's latest window.\n"
        "# TYPE vigil_window_avg gauge\n"
        'vigil_window_avg{equipment_id="m\\"1",equipment_type="pump",sensor="temp",unit="C"} 1.5\n'
        'vigil_window_avg{equipment_id="m\\"1",equipment_type="pump",sensor="vib\\\\x",unit="mm/s\\nrms"}'
        " 0.30000000000000004\n"
        'vigil_window_avg{equipment_id="m2",equipment_type="fan",sensor="temp",unit="C"} -3\n'
        "# HELP vigil_window_max Maximum of the sensor over the latest window.\n"
        "# TYPE vigil_window_max gauge\n"
        'vigil_window_max{equipment_id="m\\"1",equipment_type="pump",sensor="temp",unit="C"} 2\n'
        'vigil_window_max{equipment_id="m\\"1",equipment_type="pump",sensor="vib\\\\x",unit="mm/s\\nrms"}'
        " NaN\n"
        'vigil_window_max{equipment_id="m2",equipment_type="fan",sensor="temp",unit="C"} 0\n'
        "# HELP vigil_equipment_last_window_end_seconds End (event time, Unix seconds) of the machine's "
        "latest window.\n"
        "# TYPE vigil_equipment_last_window_end_seconds gauge\n"
        'vigil_equipment_last_window_end_seconds{equipment_id="m\\"1",equipment_type="pump"} 1700000090\n'
        'vigil_equipment_last_window_end_seconds{equipment_id="m2",equipment_type="fan"} 1700000000\n'
        "# HELP vigil_site_machines_reporting Machines whose latest window is newer than "
        "machine_silent_after_s.\n"
        "# TYPE vigil_site_machines_reporting gauge\n"
        "vigil_site_machines_reporting 1\n"
    )
    assert sink.counters.windows_consumed == 4


def test_one_group_per_site_and_stale_series_dropped_after_ttl(sink: PushgatewaySink) -> None:
    sink.ingest(
        [
            record("a1", "temp", NOW - 5, 1.0, site="north"),
            record("b1", "temp", NOW - 5, 2.0, site="south/2"),
            record("b2", "temp", NOW - 700, 3.0, site="south/2"),  # older than the 600 s TTL
            record("c1", "temp", NOW - 601, 4.0, site="west"),  # the whole site is stale
        ]
    )
    texts = sink.render()
    assert sorted(texts) == ["north", "south/2"]
    assert 'equipment_id="a1"' in texts["north"] and "b1" not in texts["north"]
    assert 'equipment_id="b1"' in texts["south/2"]
    assert "b2" not in texts["south/2"]
    # A series that was live expires once its window is older than the TTL.
    later = sink.render(now=NOW + 594)
    assert sorted(later) == ["north", "south/2"]
    assert sink.render(now=NOW + 596) == {}


def test_invalid_records_are_skipped_and_counted(sink: PushgatewaySink) -> None:
    good = record("m1", "temp", NOW - 5, 1.0)
    no_sensor = orjson.dumps({"equipment_id": "m1", "site": "x", "window_end_ms": 1})
    assert sink.ingest([good, b"{not json", no_sensor]) == 1
    assert sink.counters.bad_records == 2
    assert list(sink.render()) == ["plant-a"]


def test_progress_markers_are_skipped_not_counted_bad(sink: PushgatewaySink) -> None:
    marker = record(f"{WINDOW_STATS_MARKER_PREFIX}0", "", NOW - 5, 0.0, site="", equipment_type="", unit="")
    assert sink.ingest([record("m1", "temp", NOW - 5, 1.0), marker]) == 1
    assert sink.counters.bad_records == 0
    assert WINDOW_STATS_MARKER_PREFIX not in "".join(sink.render().values())


def test_value_formatting() -> None:
    values = [1.5, 0.1 + 0.2, float("nan"), float("inf"), float("-inf"), 1e20, 1700000005.0, 1e-7]
    assert format_values(values).tolist() == [
        "1.5",
        "0.30000000000000004",
        "NaN",
        "+Inf",
        "-Inf",
        "1e+20",
        "1700000005",
        "1e-7",
    ]
    assert all(float(text) == v for text, v in zip(format_values(values), values, strict=True) if v == v)


def test_label_escaping_and_grouping_paths() -> None:
    import pandas as pd

    escaped = escape_label_values(pd.Series(['a"b', "c\\d", "e\nf", None]))
    assert escaped.tolist() == ['a\\"b', "c\\\\d", "e\\nf", ""]
    assert grouping_path("vigil_window_stats", site="plant-a") == "/metrics/job/vigil_window_stats/site/plant-a"
    assert grouping_path("j", site="a/b") == "/metrics/job/j/site@base64/YS9i"
    assert grouping_path("j", site="") == "/metrics/job/j/site@base64/="


def test_failed_push_is_counted_not_raised(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, prometheus={"pushgateway_port": free_port()})  # nobody listens
    sink = PushgatewaySink(settings, clock=lambda: NOW)
    sink.ingest([record("m1", "temp", NOW - 5, 1.0)])
    assert sink.push() is False
    assert sink.counters.failures == 1
    assert sink.counters.pushes == 0
    assert sink.counters.last_push_ts == 0.0
