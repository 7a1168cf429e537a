"""Vega-Lite specs for the console's charts (Equipment, Fleet), built as plain dicts.

Altair builds the same specs, but serialising a layered facet through it (pandas ``to_dict`` of every row
plus JSON-schema validation) cost ~0.35 s per refresh at 2,880 windows, a sixth of the page's 2-s budget.
Here the data stays one narrow frame that Streamlit ships to the browser as Arrow, and the spec is a
dict literal checked by the tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

LIMIT_COLOUR = "#d62728"
ANOMALY_COLOUR = "#ff7f0e"
FAULT_COLOUR = "#9467bd"
STATE_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "silent": "#7f7f7f", "healthy": "#2ca02c"}


def sensor_layers(
    windows: pd.DataFrame, bounds: pd.DataFrame, anomalies: pd.DataFrame, faults: pd.DataFrame
) -> pd.DataFrame:
    """One long frame for every layer of the sensor chart, told apart by ``layer``: the statistics
    (``stats``), the configured limits (``limit``), the anomalous windows naming the sensor (``anomaly``)
    and the injected faults touching it (``fault``). Only the columns the chart reads are kept."""
    stat_cols = [c for c in ("window_end", "sensor", "avg", "min", "max") if c in windows.columns]
    parts = [windows[stat_cols].assign(layer="stats")]
    parts.append(bounds[["sensor", "min", "max"]].rename(columns={"min": "lo", "max": "hi"}).assign(layer="limit"))
    if not anomalies.empty:
        marks = anomalies[["window_end", "severity", "summary", "top_sensors"]].explode("top_sensors")
        parts.append(marks.rename(columns={"top_sensors": "sensor"}).dropna(subset=["sensor"]).assign(layer="anomaly"))
    if not faults.empty:
        spans = faults[["start", "end", "fault_type", "sensors"]].assign(sensor=faults["sensors"].str.split(", "))
        parts.append(spans.drop(columns="sensors").explode("sensor").assign(layer="fault"))
    data = pd.concat(parts, ignore_index=True)
    return data[data["sensor"].isin(windows["sensor"].unique())].reset_index(drop=True)


def _only(layer: str, extra: str = "") -> dict[str, Any]:
    return {"filter": f"datum.layer == '{layer}'" + (f" && {extra}" if extra else "")}


def sensor_facets_spec(span: tuple[datetime, datetime], with_band: bool) -> dict[str, Any]:
    """Every sensor a row of ONE faceted view (8 separate charts cost ~8x more to build and draw): the window
    mean as a line over its min-max band, the limits as dashed rules, anomalies as orange rules and injected
    faults as purple spans. Data: :func:`sensor_layers`."""
    x = {
        "field": "window_end",
        "type": "temporal",
        "title": None,
        "scale": {"domain": [span[0].isoformat(), span[1].isoformat()]},
    }
    layers: list[dict[str, Any]] = []
    if with_band:
        layers.append(
            {
                "mark": {"type": "area", "opacity": 0.2},
                "transform": [_only("stats")],
                "encoding": {"x": x, "y": {"field": "min", "type": "quantitative"}, "y2": {"field": "max"}},
            }
        )
    limit = {"type": "rule", "color": LIMIT_COLOUR, "strokeDash": [6, 3]}
    when = {"field": "window_end", "type": "temporal"}
    layers += [
        {
            "mark": {"type": "line"},
            "transform": [_only("stats")],
            "encoding": {
                "x": x,
                "y": {"field": "avg", "type": "quantitative", "title": None, "scale": {"zero": False}},
                "tooltip": [when, {"field": "avg", "type": "quantitative"}],
            },
        },
        {
            "mark": limit,
            "transform": [_only("limit", "isValid(datum.lo)")],
            "encoding": {"y": {"field": "lo", "type": "quantitative"}},
        },
        {
            "mark": limit,
            "transform": [_only("limit", "isValid(datum.hi)")],
            "encoding": {"y": {"field": "hi", "type": "quantitative"}},
        },
        {
            "mark": {"type": "rule", "color": ANOMALY_COLOUR, "opacity": 0.6},
            "transform": [_only("anomaly")],
            "encoding": {
                "x": when,
                "tooltip": [when, {"field": "severity", "type": "nominal"}, {"field": "summary", "type": "nominal"}],
            },
        },
        {
            "mark": {"type": "rect", "opacity": 0.12, "color": FAULT_COLOUR},
            "transform": [_only("fault")],
            "encoding": {
                "x": {"field": "start", "type": "temporal"},
                "x2": {"field": "end"},
                "tooltip": [{"field": "fault_type", "type": "nominal"}],
            },
        },
    ]
    return {
        "facet": {
            "row": {
                "field": "sensor",
                "type": "nominal",
                "title": None,
                "header": {"labelAngle": 0, "labelAlign": "left"},
            }
        },
        "spec": {"layer": layers, "width": 720, "height": 120},
        "resolve": {"scale": {"y": "independent"}},
    }


def score_spec() -> dict[str, Any]:
    """The combined anomaly score (1 = at the alarm limit) per window as a line, with a dot coloured by severity
    on each anomalous window only: a dot on every window (360 SVG marks an hour) cost ~0.2 s to draw."""
    x = {"field": "window_end", "type": "temporal"}
    y = {"field": "score", "type": "quantitative", "title": "score / threshold"}
    return {
        "height": 160,
        "layer": [
            {"mark": {"type": "line", "color": "#7f7f7f"}, "encoding": {"x": x, "y": y}},
            {
                "mark": {"type": "point", "filled": True, "size": 40},
                "transform": [{"filter": "datum.severity != 'normal'"}],
                "encoding": {
                    "x": x,
                    "y": y,
                    "color": {
                        "field": "severity",
                        "type": "nominal",
                        "scale": {
                            "domain": ["warning", "critical"],
                            "range": [STATE_COLOURS["warning"], STATE_COLOURS["critical"]],
                        },
                    },
                    "tooltip": [
                        x,
                        {"field": "score", "type": "quantitative"},
                        {"field": "severity", "type": "nominal"},
                        {"field": "summary", "type": "nominal"},
                    ],
                },
            },
        ],
    }


def state_by_site_spec() -> dict[str, Any]:
    """Machines per site, stacked by state (data: ``site, state, machines``), worst state at the left."""
    states = list(STATE_COLOURS)
    return {
        "mark": {"type": "bar"},
        "height": {"step": 22},
        "encoding": {
            "y": {"field": "site", "type": "nominal", "title": None},
            "x": {"field": "machines", "type": "quantitative", "title": "machines"},
            "color": {
                "field": "state",
                "type": "nominal",
                "sort": states,
                "scale": {"domain": states, "range": [STATE_COLOURS[s] for s in states]},
            },
            "order": {"field": "rank", "type": "quantitative"},
            "tooltip": [
                {"field": "site", "type": "nominal"},
                {"field": "state", "type": "nominal"},
                {"field": "machines", "type": "quantitative"},
            ],
        },
    }
