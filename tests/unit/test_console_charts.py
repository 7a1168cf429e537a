"""The Equipment page's chart data and specs (streamlit_app.charts) and its chart resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from streamlit_app.access import Principal
from streamlit_app.charts import score_spec, sensor_facets_spec, sensor_layers, state_by_site_spec
from streamlit_app.data import ConsoleData
from vigil.settings import Settings

T0 = pd.Timestamp("2026-11-29 10:00:00", tz="UTC")


def windows() -> pd.DataFrame:
    ends = [T0 + pd.Timedelta(seconds=5 * i) for i in range(3)]
    return pd.DataFrame(
        {
            "window_start": ends,
            "window_end": ends,
            "sensor": ["temp"] * 3,
            "unit": "C",
            "count": 10,
            "avg": [1.0, 2.0, 3.0],
            "stddev": 0.1,
            "min": 0.5,
            "max": 3.5,
        }
    )


def test_layers_keep_only_charted_sensors_and_name_each_anomaly_per_sensor() -> None:
    bounds = pd.DataFrame({"sensor": ["temp", "pressure"], "min": [None, 1.0], "max": [90.0, 9.0]})
    anomalies = pd.DataFrame(
        {"window_end": [T0], "severity": ["critical"], "summary": ["hot"], "top_sensors": [["temp", "pressure"]]}
    )
    faults = pd.DataFrame({"fault_type": ["step"], "sensors": ["temp, flow"], "start": [T0], "end": [T0]})
    data = sensor_layers(windows(), bounds, anomalies, faults)
    assert set(data["sensor"]) == {"temp"}, "pressure and flow have no statistics in range: not charted"
    assert data["layer"].value_counts().to_dict() == {"stats": 3, "limit": 1, "anomaly": 1, "fault": 1}
    limit = data[data["layer"] == "limit"].iloc[0]
    assert pd.isna(limit["lo"]) and limit["hi"] == 90.0
    assert {"unit", "count", "stddev", "window_start"}.isdisjoint(data.columns), "only what the chart reads"


def test_layers_without_anomalies_or_faults() -> None:
    bounds = pd.DataFrame(columns=["sensor", "min", "max"])
    data = sensor_layers(windows(), bounds, pd.DataFrame(), pd.DataFrame())
    assert list(data["layer"]) == ["stats"] * 3


def test_facet_spec_rows_per_sensor_with_the_band_only_when_min_max_exist() -> None:
    span = (T0.to_pydatetime(), (T0 + pd.Timedelta(hours=1)).to_pydatetime())
    spec = sensor_facets_spec(span, with_band=True)
    assert spec["facet"]["row"]["field"] == "sensor"
    marks = [layer["mark"]["type"] for layer in spec["spec"]["layer"]]
    assert marks == ["area", "line", "rule", "rule", "rule", "rect"]
    assert spec["spec"]["layer"][1]["encoding"]["x"]["scale"]["domain"] == [span[0].isoformat(), span[1].isoformat()]
    assert spec["resolve"] == {"scale": {"y": "independent"}}
    without = sensor_facets_spec(span, with_band=False)
    assert [layer["mark"]["type"] for layer in without["spec"]["layer"]] == marks[1:]
    line, dots = score_spec()["layer"]
    assert line["mark"]["type"] == "line" and line["encoding"]["y"]["field"] == "score"
    assert dots["transform"] == [{"filter": "datum.severity != 'normal'"}], "a dot on anomalous windows only"
    assert dots["encoding"]["color"]["scale"]["domain"] == ["warning", "critical"]


def test_chart_resolution_is_one_window_until_the_range_exceeds_the_point_budget() -> None:
    data = ConsoleData(Settings(), Principal("a", "admin", None))  # no connection is made until a query
    end = datetime(2026, 11, 29, tzinfo=UTC)
    assert data.settings.console.chart_points == 240
    assert data.bucket_s(end - timedelta(minutes=15), end) == 5  # 180 windows: every one
    assert data.bucket_s(end - timedelta(minutes=20), end) == 5  # 240 windows: exactly the budget
    assert data.bucket_s(end - timedelta(hours=1), end) == 15
    assert data.bucket_s(end - timedelta(hours=6), end) == 90
    assert data.bucket_s(end - timedelta(hours=24), end) == 360
    assert data.bucket_s(end - timedelta(days=7), end) == 2520


def test_state_by_site_stacks_every_state_in_its_own_colour_worst_first() -> None:
    spec = state_by_site_spec()
    colour = spec["encoding"]["color"]
    assert colour["scale"]["domain"] == ["critical", "warning", "silent", "healthy"]
    assert colour["scale"]["range"][0] == "#d62728" and len(set(colour["scale"]["range"])) == 4
    assert spec["encoding"]["order"] == {"field": "rank", "type": "quantitative"}
    assert {spec["encoding"][axis]["field"] for axis in ("x", "y")} == {"machines", "site"}
