"""The Pushgateway sink's state as Prometheus text exposition: frames in, text out, no I/O and no clock.

What :mod:`jobs.pushgateway_sink` keeps (the newest window per machine and sensor, the newest verdict per
machine, the anomalous-window counts, its own counters) becomes one text per Pushgateway group here; the sink
pushes them (:mod:`connectors.pushgateway`). Like ``prometheus_client.exposition``, this module only renders.

The label sets are built once per record, when the sink takes it in (:func:`machine_labels`,
:func:`series_labels`), and kept in the state frames as the ``machine_labels`` and ``series_labels`` columns,
already escaped; rendering then only joins strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from vigil.contracts import SEVERITIES

_HELP = {
    "avg": "Mean of the sensor over the machine's latest window.",
    "stddev": "Population standard deviation of the sensor over the latest window.",
    "min": "Minimum of the sensor over the latest window.",
    "max": "Maximum of the sensor over the latest window.",
    "count": "Number of samples of the sensor in the latest window.",
}


@dataclass(frozen=True)
class SinkCounters:
    """A consistent snapshot of the sink's progress (safe to read from another thread)."""

    pushes: int = 0  # successful push rounds (all sites + pipeline group)
    failures: int = 0  # failed push rounds
    series_pushed: int = 0  # series in the last successful round
    last_push_ts: float = 0.0  # wall clock of the last successful round (0 = never)
    windows_consumed: int = 0
    bad_records: int = 0  # window-stats records skipped as unparseable or missing key fields
    verdicts_consumed: int = 0
    bad_verdicts: int = 0  # anomaly verdicts skipped as unparseable or breaking the contract


@dataclass(frozen=True)
class Rendered:
    """One job's groups: site -> text exposition, and how many series they hold in all."""

    texts: dict[str, str]
    series: int


# -- the text format -------------------------------------------------------------------------
def escape_label_values(values: pd.Series) -> pd.Series:
    r"""Escape for the text format: backslash, double quote and newline (``\\``, ``\"``, ``\n``)."""
    return (
        values.fillna("")
        .str.replace("\\", "\\\\", regex=False)
        .str.replace('"', '\\"', regex=False)
        .str.replace("\n", "\\n", regex=False)
    )


def format_values(values: pd.Series | np.ndarray) -> np.ndarray:
    """Floats as the text format spells them: shortest round-trip repr, NaN, +Inf, -Inf."""
    arr = np.asarray(values, dtype=np.float64)
    text = pc.cast(pa.array(arr, from_pandas=False), pa.string()).to_numpy(zero_copy_only=False)
    if not np.isfinite(arr).all():
        text = text.astype(object)
        text[np.isnan(arr)] = "NaN"
        text[np.isposinf(arr)] = "+Inf"
        text[np.isneginf(arr)] = "-Inf"
    return text


def family(name: str, kind: str, help_text: str, lines: pd.Series | Sequence[str]) -> str:
    """One metric family: its HELP and TYPE lines, then its sample lines."""
    body = lines.str.cat(sep="\n") if isinstance(lines, pd.Series) else "\n".join(lines)
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{body}\n"


# -- label sets, built once per record ---------------------------------------------------------
def machine_labels(frame: pd.DataFrame) -> pd.Series:
    """``equipment_id="...",equipment_type="..."`` per row, escaped."""
    eq, et = escape_label_values(frame["equipment_id"]), escape_label_values(frame["equipment_type"])
    return 'equipment_id="' + eq + '",equipment_type="' + et + '"'


def series_labels(frame: pd.DataFrame, machine: pd.Series) -> pd.Series:
    """A window-stats series' labels per row: the machine's (``machine``), then sensor and unit, escaped."""
    sensor, unit = escape_label_values(frame["sensor"]), escape_label_values(frame["unit"])
    return machine + ',sensor="' + sensor + '",unit="' + unit + '"'


# -- the groups --------------------------------------------------------------------------------
def render_window_stats(
    state: pd.DataFrame, stats: Sequence[str], *, now: float, machine_silent_after_s: float
) -> Rendered:
    """The window-stats group of each site: ``vigil_window_<stat>`` per series, then per machine and site.

    ``state``: one row per live (equipment_id, sensor), sorted by site then key, with ``series_labels``,
    ``machine_labels``, ``window_end_ms`` and each of ``stats``. A machine reports if its latest window
    ended less than ``machine_silent_after_s`` before ``now``.
    """
    if state.empty:
        return Rendered({}, 0)
    silent_ms = (now - machine_silent_after_s) * 1000.0
    machines = (
        state.groupby(["site", "equipment_id"], sort=True)
        .agg(machine_labels=("machine_labels", "last"), window_end_ms=("window_end_ms", "max"))
        .reset_index()
    )
    machines["reporting"] = machines["window_end_ms"] >= silent_ms
    reporting = machines.groupby("site", sort=True)["reporting"].sum()

    families = {
        stat: f"vigil_window_{stat}{{" + state["series_labels"] + "} " + format_values(state[stat]) for stat in stats
    }
    last_end = (
        "vigil_equipment_last_window_end_seconds{"
        + machines["machine_labels"]
        + "} "
        + format_values(machines["window_end_ms"] / 1000.0)
    )
    series_rows = state.groupby("site", sort=True).indices
    machine_rows = machines.groupby("site", sort=True).indices
    texts: dict[str, str] = {}
    for site, rows in series_rows.items():
        parts = [family(f"vigil_window_{stat}", "gauge", _HELP[stat], families[stat].iloc[rows]) for stat in stats]
        parts.append(
            family(
                "vigil_equipment_last_window_end_seconds",
                "gauge",
                "End (event time, Unix seconds) of the machine's latest window.",
                last_end.iloc[machine_rows[site]],
            )
        )
        parts.append(
            family(
                "vigil_site_machines_reporting",
                "gauge",
                "Machines whose latest window is newer than machine_silent_after_s.",
                [f"vigil_site_machines_reporting {int(reporting[site])}"],
            )
        )
        texts[site] = "".join(parts)
    return Rendered(texts, len(state) * len(stats) + len(machines) + len(texts))


def render_verdicts(
    state: pd.DataFrame, score_names: Sequence[str], anomalous: Mapping[tuple[str, str], int]
) -> Rendered:
    """The verdict group of each site: the gauges of each machine's latest verdict, then the site's counter.

    ``state``: one row per live machine, sorted by site then equipment_id, with ``machine_labels``,
    ``score``, ``severity`` (its code), ``kind``, ``window_end_ms`` and one column per detector score
    (``score_names``; NaN where that detector did not score). ``anomalous``: (site, severity) -> anomalous
    window verdicts counted so far.
    """
    if state.empty:
        return Rendered({}, 0)
    labels = "{" + state["machine_labels"] + "} "
    gauges = [
        (
            "vigil_anomaly_score",
            "Combined anomaly score of the machine's latest verdict: the max of its detector "
            "scores, each normalised to its threshold (above 1 fires).",
            format_values(state["score"]),
        ),
        (
            "vigil_anomaly_severity",
            "Severity of the machine's latest verdict: 0 normal, 1 warning, 2 critical.",
            state["severity"].astype(str),
        ),
        (
            "vigil_machine_silent",
            "1 after a dead_machine verdict until the machine's next window verdict, else 0.",
            np.where(state["kind"] == "dead_machine", "1", "0"),
        ),
        (
            "vigil_anomaly_window_end_seconds",
            "End (event time, Unix seconds) of the window of the machine's latest verdict.",
            format_values(state["window_end_ms"] / 1000.0),
        ),
    ]
    lines = {name: name + labels + values for name, _, values in gauges}
    # One vigil_detector_score per (machine, detector that scored), machine-major.
    names = [n for n in score_names if n in state.columns]
    scores = state[names].to_numpy(dtype=np.float64)
    rows, cols = np.nonzero(~np.isnan(scores))
    detector_lines = (
        "vigil_detector_score{"
        + pd.Series(state["machine_labels"].to_numpy()[rows])
        + ',detector="'
        + pd.Series(np.asarray(names, dtype=object)[cols])
        + '"} '
        + format_values(scores[rows, cols])
    )
    detector_sites = state["site"].to_numpy()[rows]
    detector_rows = pd.Series(detector_sites).groupby(detector_sites, sort=True).indices
    texts: dict[str, str] = {}
    counter_series = 0
    for site, site_rows in state.groupby("site", sort=True).indices.items():
        parts = [family(name, "gauge", help_text, lines[name].iloc[site_rows]) for name, help_text, _ in gauges]
        if site in detector_rows:
            parts.insert(
                2,
                family(
                    "vigil_detector_score",
                    "gauge",
                    "Score of each detector that scored the machine's latest verdict, normalised to its "
                    "threshold (1 = at the alarm limit).",
                    detector_lines.iloc[detector_rows[site]],
                ),
            )
        # warning and critical always (a counter should exist before its first increase)
        severities = [s for s in SEVERITIES if s != "normal" or (site, s) in anomalous]
        counter_series += len(severities)
        parts.append(
            family(
                "vigil_anomalous_windows_total",
                "counter",
                "Window verdicts of the site's machines that were anomalous, by severity (each window once).",
                [f'vigil_anomalous_windows_total{{severity="{s}"}} {anomalous.get((site, s), 0)}' for s in severities],
            )
        )
        texts[site] = "".join(parts)
    return Rendered(texts, len(state) * len(gauges) + len(rows) + counter_series)


def render_pipeline(counters: SinkCounters) -> str:
    """The sink's own group: its progress since it started."""
    c = counters
    return "".join(
        [
            family(
                "vigil_sink_last_push_timestamp_seconds",
                "gauge",
                "Unix time of the sink's last successful push.",
                [f"vigil_sink_last_push_timestamp_seconds {format_values([c.last_push_ts])[0]}"],
            ),
            family(
                "vigil_sink_windows_consumed_total",
                "counter",
                "Window-stats records consumed from Kafka since the sink started.",
                [f"vigil_sink_windows_consumed_total {c.windows_consumed}"],
            ),
            family(
                "vigil_sink_push_failures_total",
                "counter",
                "Push rounds that failed since the sink started.",
                [f"vigil_sink_push_failures_total {c.failures}"],
            ),
            family(
                "vigil_sink_bad_records_total",
                "counter",
                "Window-stats records skipped as invalid since the sink started.",
                [f"vigil_sink_bad_records_total {c.bad_records}"],
            ),
            family(
                "vigil_sink_verdicts_consumed_total",
                "counter",
                "Anomaly verdicts consumed from Kafka since the sink started.",
                [f"vigil_sink_verdicts_consumed_total {c.verdicts_consumed}"],
            ),
            family(
                "vigil_sink_bad_verdicts_total",
                "counter",
                "Anomaly verdicts skipped as invalid since the sink started.",
                [f"vigil_sink_bad_verdicts_total {c.bad_verdicts}"],
            ),
            family(
                "vigil_sink_series_pushed",
                "gauge",
                "Series in the last successful push.",
                [f"vigil_sink_series_pushed {c.series_pushed}"],
            ),
        ]
    )
