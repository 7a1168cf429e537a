"""Hot path to people: anomaly verdicts on Kafka -> alerts in Alertmanager (v2 API).

Consumes ``settings.kafka.anomalies_topic`` (group ``settings.alerting.publisher_consumer_group``): one verdict
per scored (machine, window), normal ones included, plus ``dead_machine`` records
(connectors/contracts.py ANOMALY_JSON_SCHEMA). Each polled batch is parsed at once with pyarrow and folded into
the set of active alerts with pandas; the alert changes it causes go to Alertmanager in one POST.

Alert identity (Alertmanager identifies an alert by its label set):

- ``VigilEquipmentAnomaly``, one alert per condition of an anomalous window verdict: each rule hit
  ``<sensor>:<rule>`` -> ``{detector=<rule>, sensor=<sensor>}``; each dead sensor -> ``{detector=dead_sensor,
  sensor}``; each model in ``detectors`` (pca_t2q, isolation_forest) -> ``{detector=<model>, sensor=<the
  verdict's top sensor when the model first fired>}``. A model's top sensor changes from window to window; the
  sensor label stays the one of its first window for the whole episode, so the alert does not flap into a new
  one whenever the ranking moves.
- ``VigilMachineDead`` (``detector=dead_machine``, ``sensor="*"``: Alertmanager drops empty label values) for a
  ``dead_machine`` record, resolved by the next window verdict of that machine (its data is back).
- Labels: alertname, severity, site, equipment_id, equipment_type, sensor, detector, source="vigil-scoring".
  startsAt is the start of the episode's first anomalous window; endsAt is ``now + alert_ttl_s`` while firing.

Severity: ``severity`` is part of the label set, so a condition that escalates from warning to critical becomes
a second alert (the critical one), posted as soon as the first critical window arrives. The warning one keeps
firing, muted by Alertmanager's inhibit rule (critical mutes warning with equal alertname, equipment_id,
detector, sensor: flink-conf/prometheus/alertmanager.yml), and both resolve together at the end of the episode.
An episode never de-escalates: a later warning window keeps the critical alert firing (no flapping pages).

Resolution: a condition resolves (POST with endsAt = now) after ``resolve_after_clear_windows`` consecutive
window verdicts of its machine without it; a window where another condition on the same sensor fired does not
count as clear (the rate-of-change hit at the start of a threshold breach resolves with the breach; only
rule hits and dead sensors hold, not a model's top sensor).
Firing alerts are re-posted every ``repost_interval_s`` with a fresh
``endsAt = now + alert_ttl_s``, so the alerts of a dead publisher expire by themselves. When there is nothing to
post for ``HEARTBEAT_S``, an empty POST proves Alertmanager reachable (the publisher's liveness metric).

Delivery: each batch's changes are POSTed before its offsets are committed; while Alertmanager is down the POST
is retried with backoff (tenacity) and nothing is committed, so nothing is lost. Alertmanager de-duplicates by
label set, so a replay after a crash re-posts the same alerts harmlessly; verdicts of a window the publisher
already processed for that machine are skipped, so a replay never counts a clear window twice. On start the
active set is rebuilt from Alertmanager (alerts with source="vigil-scoring"), so a restarted publisher still
resolves what it fired before (its clear-window counts restart at 0: resolution may take up to
``resolve_after_clear_windows`` more windows).

Catching up on a backlog, an episode that began and ended inside one batch is posted resolved only:
Alertmanager does not page for it (it is history by then; ClickHouse has every verdict).

Latency: polls with a ``POLL_TIMEOUT_S`` timeout and posts each batch at once (no waiting for batches to fill).

Run one publisher per Alertmanager (a second one would re-post alerts the first resolved).
Self-metrics go to the Pushgateway as job ``vigil_alert_publisher``.

Run: ``python -m connectors.alert_publisher`` (until SIGTERM/SIGINT).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from connectors.alertmanager import (
    AlertmanagerClient,
    AlertmanagerError,
    AlertmanagerRejected,
    AlertmanagerUnavailable,
    rfc3339,
)
from connectors.contracts import ANOMALY_JSON_SCHEMA, ANOMALY_KINDS, DETECTOR_SCORE_FIELDS, SEVERITIES
from connectors.kafka import consume_batches, ensure_topics, make_consumer
from connectors.self_metrics import push_self_metrics
from vigil.settings import Settings, get_settings
from vigil.signals import stop_event_on_signals

log = logging.getLogger(__name__)

ALERT_ANOMALY = "VigilEquipmentAnomaly"
ALERT_DEAD = "VigilMachineDead"
SOURCE = "vigil-scoring"
PUBLISHER_JOB = "vigil_alert_publisher"
MODEL_DETECTORS = tuple(d for d in DETECTOR_SCORE_FIELDS if d != "rules")
WHOLE_MACHINE = "*"  # sensor label of machine-wide alerts (an empty label value would be dropped)
POLL_TIMEOUT_S = 0.1  # Kafka poll: the longest a verdict waits in the publisher before it is posted
MAX_POLL_MESSAGES = 5000
HEARTBEAT_S = 10.0  # post (possibly nothing) at least this often: proves the publisher and Alertmanager alive
MAX_BACKOFF_S = 5.0  # retry Alertmanager at least this often while it is down

_FIELDS = (
    "equipment_id", "site", "equipment_type", "window_start_ms", "window_end_ms", "kind", "is_anomaly",
    "severity", "score", "detectors", "rule_hits", "top_sensors", "dead_sensors", "model_versions", "summary",
    "last_seen_ms", "emitted_at_ms",
)  # fmt: skip
_SCHEMA = pa.schema(ANOMALY_JSON_SCHEMA.field(name) for name in _FIELDS)
KEY = ["equipment_id", "alertname", "detector", "cond_sensor"]
_STATE_DTYPES: dict[str, Any] = {
    "equipment_id": object, "alertname": object, "detector": object,
    "cond_sensor": object,  # the sensor part of the identity: "" for models (their sensor label is sticky)
    "site": object, "equipment_type": object, "sensor": object,
    "starts_ms": np.int64, "warning": bool, "critical": bool,  # which severities of the condition fired
    "clear": np.int64,  # consecutive window verdicts of the machine without the condition
    "win_start_ms": np.int64, "win_end_ms": np.int64,  # newest window that had the condition
    "summary": object, "description": object,
}  # fmt: skip
_VERDICT_COLUMNS = ["site", "equipment_type", "severity", "win_start_ms", "win_end_ms", "summary", "description"]


@dataclass(frozen=True)
class PublisherCounters:
    """A consistent snapshot of the publisher's progress (safe to read from another thread)."""

    verdicts_consumed: int = 0
    bad_verdicts: int = 0  # unparseable or breaking the contract: skipped (the ClickHouse sink dead-letters them)
    stale_verdicts: int = 0  # windows already processed for their machine (replays): skipped
    alerts_firing: int = 0  # firing label sets (a condition escalated to critical counts twice)
    alerts_posted: int = 0  # alert objects accepted by Alertmanager (firing, re-posted and resolved)
    alerts_rejected: int = 0  # alerts Alertmanager refused as invalid (logged and dropped)
    posts: int = 0
    post_failures: int = 0
    last_post_ts: float = 0.0  # wall clock of the last POST Alertmanager accepted (0 = never)
    last_window_end_ms: int = 0  # newest window end processed


def _empty_state() -> pd.DataFrame:
    return pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in _STATE_DTYPES.items()})


def parse_verdicts(values: Sequence[bytes]) -> tuple[pa.Table, int]:
    """One pyarrow JSON parse per batch; per value only to isolate bad records. Returns (table, unparseable)."""
    options = pa_json.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")
    try:
        table = pa_json.read_json(io.BytesIO(b"\n".join(values)), parse_options=options)
        return table.select(_SCHEMA.names), 0
    except pa.ArrowInvalid:
        tables, bad = [], 0
        for value in values:
            try:
                tables.append(pa_json.read_json(io.BytesIO(value), parse_options=options).select(_SCHEMA.names))
            except pa.ArrowInvalid:
                bad += 1
        return (pa.concat_tables(tables) if tables else _SCHEMA.empty_table()), bad


def _explode(frame: pd.DataFrame, column: str, keep: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (machine, non-empty list element) of a list column: equipment_id, value and ``keep``."""
    out = frame[["equipment_id", *keep, column]].explode(column).rename(columns={column: "value"})
    out = out[out["value"].notna() & (out["value"].astype(str) != "")]
    return out.assign(value=out["value"].astype(str)).reset_index(drop=True)


def _iso(ms: pd.Series) -> pd.Series:
    """Unix ms -> RFC 3339 UTC with milliseconds."""
    stamps = pd.to_datetime(ms.to_numpy(np.int64), unit="ms", utc=True)
    return pd.Series(stamps.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z", index=ms.index)


def _ms(iso: pd.Series) -> pd.Series:
    """RFC 3339 -> Unix ms (unparseable -> 0)."""
    stamps = pd.to_datetime(iso, utc=True, errors="coerce", format="ISO8601")
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")).fillna(0).astype(np.int64)


class AlertMapper:
    """Verdict batches -> alert changes, with the active alerts as state (no I/O: the publisher does that)."""

    def __init__(self, settings: Settings) -> None:
        alerting = settings.alerting
        self.clear_windows = alerting.resolve_after_clear_windows
        self.ttl_s = alerting.alert_ttl_s
        self.console_url = alerting.console_url.rstrip("/")
        self.critical_ratio = settings.scoring.critical_ratio
        self.active = _empty_state()
        self.last_start = pd.Series(dtype=np.int64)  # newest window_start_ms processed, per machine
        self.counters = PublisherCounters()

    def _count(self, **changes: int) -> None:
        current = self.counters
        self.counters = replace(current, **{k: getattr(current, k) + v for k, v in changes.items()})

    # -- verdicts -> frame -------------------------------------------------------------------------------------
    def _frame(self, values: Sequence[bytes]) -> pd.DataFrame:
        """Valid, new verdicts of a batch in processing order, with their annotation text, one row each."""
        table, bad = parse_verdicts(values)
        joined = {
            "top_text": pc.binary_join(table["top_sensors"], ", "),
            "first_top": pc.binary_join(pc.list_slice(table["top_sensors"], 0, 1), ""),
            "hits_text": pc.binary_join(table["rule_hits"], ", "),
        }
        frame = table.to_pandas()
        for name, column in joined.items():
            frame[name] = column.to_pandas().fillna("")
        ok = frame[["equipment_id", "site", "window_start_ms", "window_end_ms"]].notna().all(axis=1)
        ok &= frame["kind"].isin(ANOMALY_KINDS) & frame["severity"].isin(SEVERITIES)
        bad += int((~ok).sum())
        if bad:
            log.warning(
                "skipped %d anomaly verdicts without equipment_id/site/window_start_ms/window_end_ms, with "
                "an unknown kind or severity, or not JSON; fix the producer (scoring job) or inspect the "
                "topic",
                bad,
            )
        frame = frame[ok.to_numpy()].assign(
            window_start_ms=lambda f: f["window_start_ms"].astype(np.int64),
            window_end_ms=lambda f: f["window_end_ms"].astype(np.int64),
            emitted_at_ms=lambda f: f["emitted_at_ms"].fillna(0).astype(np.int64),
            equipment_type=lambda f: f["equipment_type"].fillna(""),
            is_anomaly=lambda f: f["is_anomaly"].eq(True) & f["kind"].eq("window"),
        )
        # Replays (Kafka redelivery, a Flink restart) repeat windows: keep one verdict per machine and window
        # (the newest emitted), and none for a window at or before the newest one already processed.
        frame = frame.sort_values(["equipment_id", "window_start_ms", "emitted_at_ms"], kind="stable")
        valid = len(frame)
        frame = frame[~frame.duplicated(["equipment_id", "window_start_ms"], keep="last")]
        seen = frame["equipment_id"].map(self.last_start).fillna(np.iinfo(np.int64).min).to_numpy(np.int64)
        frame = frame[frame["window_start_ms"].to_numpy(np.int64) > seen].reset_index(drop=True)
        self._count(verdicts_consumed=len(values), bad_verdicts=bad, stale_verdicts=valid - len(frame))
        return frame

    def _describe(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The annotation text of each verdict, vectorised."""
        values = frame["score"].fillna(0.0).to_numpy(np.float64)
        score = pd.Series(np.char.mod("%.2f", values), index=frame.index)
        dead = frame["kind"] == "dead_machine"
        last_seen = frame["last_seen_ms"].fillna(frame["window_start_ms"]).astype(np.int64)
        # A window flagged by hard evidence alone (a threshold, stuck, missing samples) has no graded score.
        score_text = np.where(
            values > 0,
            "Score " + score + " (normalised to each detector's limit: alarm at 1.0, critical at "
            + str(float(self.critical_ratio)) + ").",
            "",
        )  # fmt: skip
        window_text = (
            score_text
            + np.where(frame["top_text"] != "", " Top sensors: " + frame["top_text"] + ".", "")
            + np.where(frame["hits_text"] != "", " Rule hits: " + frame["hits_text"] + ".", "")
            + np.where(frame["model_versions"].fillna("") != "", " Models: " + frame["model_versions"].fillna("")
                       + ".", " Models: none live (rules only).")
        )  # fmt: skip
        window_text = pd.Series(window_text, index=frame.index).str.strip()
        dead_text = "No window statistics from " + frame["equipment_id"] + " since " + _iso(last_seen) + "."
        return frame.assign(
            severity=frame["severity"],
            win_start_ms=frame["window_start_ms"],
            win_end_ms=frame["window_end_ms"],
            summary=frame["summary"].fillna(""),
            description=np.where(dead, dead_text, window_text),
        )

    def _conditions(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Every alert condition of one verdict per machine: KEY + sensor + the verdict's columns."""
        anomalous = rows[rows["is_anomaly"].to_numpy()]
        hits = _explode(anomalous, "rule_hits")
        sensor, _, rule = hits["value"].str.rpartition(":").reindex(columns=[0, 1, 2]).fillna("").T.to_numpy()
        sensor = np.where(sensor == "", WHOLE_MACHINE, sensor)
        rules = pd.DataFrame(
            {"equipment_id": hits["equipment_id"].to_numpy(), "detector": rule, "sensor": sensor, "cond_sensor": sensor}
        )
        fired = _explode(anomalous, "detectors", keep=["first_top"])
        fired = fired[fired["value"].isin(MODEL_DETECTORS)]
        models = pd.DataFrame(
            {
                "equipment_id": fired["equipment_id"],
                "detector": fired["value"],
                "sensor": fired["first_top"].where(fired["first_top"] != "", WHOLE_MACHINE),
                "cond_sensor": "",
            }
        )
        dead = _explode(anomalous, "dead_sensors")
        dead = pd.DataFrame(
            {
                "equipment_id": dead["equipment_id"],
                "detector": "dead_sensor",
                "sensor": dead["value"],
                "cond_sensor": dead["value"],
            }
        )
        window = pd.concat([rules, models, dead], ignore_index=True).assign(alertname=ALERT_ANOMALY)
        silent = rows.loc[(rows["kind"] == "dead_machine").to_numpy(), ["equipment_id"]].assign(
            alertname=ALERT_DEAD, detector="dead_machine", sensor=WHOLE_MACHINE, cond_sensor=WHOLE_MACHINE
        )
        conds = pd.concat([window, silent], ignore_index=True).drop_duplicates(KEY)
        verdicts = rows.set_index("equipment_id")[_VERDICT_COLUMNS]
        return conds.join(verdicts, on="equipment_id")

    # -- one step: at most one verdict per machine -----------------------------------------------------------
    def _step(self, rows: pd.DataFrame, now_ms: int) -> pd.DataFrame:
        """Fold one verdict per machine into the active set; returns the changed conditions (``resolved``)."""
        conds = self._conditions(rows).rename(columns={c: "v_" + c for c in ["sensor", *_VERDICT_COLUMNS]})
        merged = self.active.merge(conds, on=KEY, how="outer", indicator=True)
        new = (merged["_merge"] == "right_only").to_numpy()
        seen = (merged["_merge"] == "both").to_numpy()
        absent = (merged["_merge"] == "left_only").to_numpy()
        with_data = rows.loc[(rows["kind"] == "window").to_numpy(), "equipment_id"]
        # A condition whose sensor is still anomalous in this window (another rule or detector on it fired) is
        # held, not cleared: one fault is one story, so a one-window rate-of-change hit at the start of a
        # threshold breach stays firing with it and resolves with it (one RESOLVED message, not one per rule).
        by_sensor = conds[conds["cond_sensor"] != ""]  # rule hits and dead sensors (a model's top sensor is soft)
        pairs_now = pd.MultiIndex.from_arrays([by_sensor["equipment_id"], by_sensor["v_sensor"]])
        held = pd.MultiIndex.from_arrays([merged["equipment_id"], merged["sensor"]]).isin(pairs_now) & (
            merged["alertname"] == ALERT_ANOMALY
        ).to_numpy()
        clear_now = absent & merged["equipment_id"].isin(with_data).to_numpy() & ~held

        critical_now = (merged["v_severity"] == "critical").to_numpy()
        escalated = seen & critical_now & ~merged["critical"].eq(True).to_numpy()
        merged.loc[new, "sensor"] = merged.loc[new, "v_sensor"]
        merged.loc[new, "starts_ms"] = np.minimum(merged.loc[new, "v_win_start_ms"].to_numpy(np.int64), now_ms)
        merged.loc[new, "warning"] = ~critical_now[new]
        merged.loc[new, "critical"] = critical_now[new]
        merged.loc[escalated, "critical"] = True
        present = new | seen
        for col in _VERDICT_COLUMNS:
            if col != "severity":
                merged.loc[present, col] = merged.loc[present, "v_" + col]
        merged["clear"] = np.where(present, 0, merged["clear"].fillna(0).to_numpy(np.int64) + clear_now)
        # A dead machine is back with its first window; a window condition needs clear_windows windows without it.
        resolved = clear_now & (
            (merged["clear"].to_numpy() >= self.clear_windows) | (merged["alertname"] == ALERT_DEAD).to_numpy()
        )
        merged = merged[list(_STATE_DTYPES)].astype(_STATE_DTYPES)
        self.active = merged[~resolved].reset_index(drop=True)
        changed = merged[new | escalated | resolved].assign(resolved=resolved[new | escalated | resolved])
        # An escalation posts only the new critical alert; the warning one is already in Alertmanager.
        changed.loc[escalated[new | escalated | resolved], "warning"] = False
        return changed

    def apply(self, values: Sequence[bytes], now: float) -> list[dict[str, Any]]:
        """Fold a polled batch of verdict JSON values into the active set; returns the alerts to POST."""
        if not values:
            return []
        frame = self._frame(values)
        if frame.empty:
            return []
        frame = self._describe(frame)
        now_ms = int(now * 1000)
        rank = frame.groupby("equipment_id", sort=False).cumcount().to_numpy()
        # Machines advance together: one vectorised step per window depth of the batch (usually one).
        changes = [self._step(frame[rank == r], now_ms) for r in range(int(rank.max()) + 1)]
        self.last_start = (
            pd.concat([self.last_start, frame.groupby("equipment_id")["window_start_ms"].max()]).groupby(level=0).max()
        )
        newest = max(self.counters.last_window_end_ms, int(frame["window_end_ms"].max()))
        self.counters = replace(self.counters, last_window_end_ms=newest)
        changed = pd.concat(changes, ignore_index=True)
        # One change per condition: its last state, posting every severity any of its steps posted.
        posted = changed.groupby(KEY, sort=False)[["warning", "critical"]].transform("any")
        changed = changed.assign(warning=posted["warning"], critical=posted["critical"])
        changed = changed[~changed.duplicated(KEY, keep="last")]
        self._set_firing()
        return self.render(changed, now, changed["resolved"].to_numpy(bool))

    def firing_alerts(self, now: float) -> list[dict[str, Any]]:
        """Every active alert with a fresh endsAt (the periodic re-post)."""
        return self.render(self.active, now, np.zeros(len(self.active), dtype=bool))

    def _set_firing(self) -> None:
        firing = int(self.active["warning"].sum() + self.active["critical"].sum())
        self.counters = replace(self.counters, alerts_firing=firing)

    # -- rendering -----------------------------------------------------------------------------------------
    def render(self, conds: pd.DataFrame, now: float, resolved: np.ndarray) -> list[dict[str, Any]]:
        """Alertmanager v2 postable alerts: one per fired severity of each condition."""
        if conds.empty:
            return []
        conds = conds.assign(resolved=resolved)
        per_severity = pd.concat(
            [conds[conds[sev].to_numpy(bool)].assign(severity=sev) for sev in ("warning", "critical")],
            ignore_index=True,
        )
        if per_severity.empty:
            return []
        link = self.console_url + "/?equipment=" + per_severity["equipment_id"].map(lambda e: quote(e, safe=""))
        starts = _iso(per_severity["starts_ms"])
        ends = pd.Series(
            np.where(per_severity["resolved"], rfc3339(now), rfc3339(now + self.ttl_s)), index=per_severity.index
        )
        window_start, window_end = _iso(per_severity["win_start_ms"]), _iso(per_severity["win_end_ms"])
        labels = (
            per_severity[["alertname", "severity", "site", "equipment_id", "equipment_type", "sensor", "detector"]]
            .assign(source=SOURCE)
            .to_dict("records")
        )
        return [
            {
                "labels": {k: v for k, v in label.items() if v != ""},
                "annotations": {
                    "summary": summary,
                    "description": description,
                    "console_url": url,
                    "window_start": w_start,
                    "window_end": w_end,
                },
                "startsAt": start,
                "endsAt": end,
                "generatorURL": url,
            }
            for label, summary, description, url, w_start, w_end, start, end in zip(
                labels,
                per_severity["summary"],
                per_severity["description"],
                link,
                window_start,
                window_end,
                starts,
                ends,
                strict=True,
            )
        ]

    # -- restart ---------------------------------------------------------------------------------------------
    def seed(self, alerts: Iterable[Mapping[str, Any]]) -> int:
        """Rebuild the active set from Alertmanager's alerts (GET /alerts); returns how many conditions."""
        rows = [
            {
                **alert.get("labels", {}),
                **{"a_" + k: v for k, v in alert.get("annotations", {}).items()},
                "startsAt": alert.get("startsAt", ""),
            }
            for alert in alerts
            if alert.get("labels", {}).get("source") == SOURCE
            and alert.get("labels", {}).get("alertname") in (ALERT_ANOMALY, ALERT_DEAD)
        ]
        if not rows:
            return 0
        cols = [
            "alertname",
            "severity",
            "site",
            "equipment_id",
            "equipment_type",
            "sensor",
            "detector",
            "startsAt",
            "a_summary",
            "a_description",
            "a_window_start",
            "a_window_end",
        ]
        found = pd.DataFrame(rows).reindex(columns=cols)
        found = found[found["equipment_id"].notna() & found["detector"].notna()]
        found = found.fillna(
            {
                "equipment_type": "",
                "site": "",
                "sensor": WHOLE_MACHINE,
                "a_summary": "",
                "a_description": "",
                "severity": "warning",
            }
        )
        found["cond_sensor"] = found["sensor"].where(~found["detector"].isin(MODEL_DETECTORS), "")
        found["warning"] = found["severity"] != "critical"
        found["critical"] = found["severity"] == "critical"
        found["starts_ms"] = _ms(found["startsAt"])
        found["win_start_ms"] = _ms(found["a_window_start"].fillna(""))
        found["win_end_ms"] = _ms(found["a_window_end"].fillna(""))
        state = found.groupby(KEY, as_index=False, sort=False).agg(
            site=("site", "last"),
            equipment_type=("equipment_type", "last"),
            sensor=("sensor", "first"),
            starts_ms=("starts_ms", "min"),
            warning=("warning", "any"),
            critical=("critical", "any"),
            win_start_ms=("win_start_ms", "max"),
            win_end_ms=("win_end_ms", "max"),
            summary=("a_summary", "last"),
            description=("a_description", "last"),
        )
        state["clear"] = 0
        state = state[list(_STATE_DTYPES)].astype(_STATE_DTYPES)
        self.active = pd.concat([self.active, state], ignore_index=True).drop_duplicates(KEY, keep="last")
        self.active = self.active.reset_index(drop=True)
        self.last_start = (
            pd.concat([self.last_start, self.active.groupby("equipment_id")["win_start_ms"].max()])
            .groupby(level=0)
            .max()
        )
        self._set_firing()
        return len(state)


class _MetricsCollector:
    """The publisher's counters as Prometheus metrics (read at each push)."""

    def __init__(self, counters: Callable[[], PublisherCounters]) -> None:
        self._counters = counters

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        c = self._counters()
        p = "vigil_alert_publisher_"
        yield GaugeMetricFamily(
            p + "last_post_timestamp_seconds",
            "Unix time of the last POST Alertmanager accepted (at least every 10 s when alive).",
            value=c.last_post_ts,
        )
        yield GaugeMetricFamily(
            p + "alerts_firing", "Alerts (label sets) the publisher keeps firing.", value=c.alerts_firing
        )
        yield GaugeMetricFamily(
            p + "last_window_end_seconds",
            "End (event time) of the newest window processed.",
            value=c.last_window_end_ms / 1000.0,
        )
        for name, help_text, value in (
            ("verdicts_consumed", "Verdicts consumed from Kafka since start.", c.verdicts_consumed),
            ("bad_verdicts", "Verdicts skipped as invalid since start.", c.bad_verdicts),
            ("stale_verdicts", "Verdicts skipped as already processed (replays) since start.", c.stale_verdicts),
            (
                "alerts_posted",
                "Alerts accepted by Alertmanager (firing, re-posted, resolved) since start.",
                c.alerts_posted,
            ),
            ("alerts_rejected", "Alerts Alertmanager refused as invalid since start.", c.alerts_rejected),
            ("posts", "POSTs Alertmanager accepted since start.", c.posts),
            ("post_failures", "Failed POST attempts (Alertmanager down or refusing) since start.", c.post_failures),
        ):
            yield CounterMetricFamily(p + name, help_text, value=value)


class AlertPublisher:
    """Kafka verdicts -> Alertmanager, committing offsets only after Alertmanager accepted the batch's alerts."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.mapper = AlertMapper(settings)
        self.client = AlertmanagerClient(settings.prometheus.alertmanager_url)
        self._clock = clock
        self._lock = threading.Lock()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_MetricsCollector(lambda: self.counters))  # type: ignore[arg-type]

    @property
    def counters(self) -> PublisherCounters:
        with self._lock:
            return self.mapper.counters

    def _count(self, **changes: float) -> None:
        with self._lock:
            self.mapper._count(**changes)  # type: ignore[arg-type]

    # -- Alertmanager ----------------------------------------------------------------------------------------
    def _retrying(self, stop: threading.Event, what: str) -> Retrying:
        def before_sleep(state: RetryCallState) -> None:
            self._count(post_failures=1)
            log.error(
                "%s failed (attempt %d, retrying in %.1f s; Kafka offsets not committed): %s",
                what,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
                state.outcome.exception() if state.outcome else "?",
            )

        return Retrying(
            retry=retry_if_exception_type(AlertmanagerUnavailable),
            wait=wait_exponential(multiplier=0.1, min=0.1, max=MAX_BACKOFF_S),
            stop=lambda _state: stop.is_set(),
            sleep=stop.wait,
            before_sleep=before_sleep,
            reraise=True,
        )

    def rebuild(self, stop: threading.Event) -> bool:
        """Load the alerts this publisher fired before a restart; waits for Alertmanager. False if stopped."""
        try:
            for attempt in self._retrying(stop, f"reading active alerts from {self.client.base_url}"):
                with attempt:
                    alerts = self.client.get_alerts([f'source="{SOURCE}"'])
        except AlertmanagerUnavailable:
            return False
        with self._lock:
            seeded = self.mapper.seed(alerts)
        log.info("rebuilt %d active alert conditions from Alertmanager", seeded)
        return True

    def post(self, alerts: list[dict[str, Any]], stop: threading.Event) -> bool:
        """POST until Alertmanager accepts (alerts it refuses as invalid are logged and dropped). False if stopped."""
        try:
            for attempt in self._retrying(stop, f"POST of {len(alerts)} alerts to {self.client.base_url}"):
                with attempt:
                    self._post_once(alerts)
        except AlertmanagerUnavailable:
            return False
        return True

    def _post_once(self, alerts: list[dict[str, Any]]) -> None:
        try:
            self.client.post_alerts(alerts)
            accepted, rejected = len(alerts), 0
        except AlertmanagerRejected as exc:  # one invalid alert fails the whole POST: find it, keep the rest
            log.error("Alertmanager refused a batch of %d alerts (%s); posting them one by one", len(alerts), exc)
            accepted = rejected = 0
            for alert in alerts:
                try:
                    self.client.post_alerts([alert])
                    accepted += 1
                except AlertmanagerRejected as one:
                    rejected += 1
                    log.error("dropped an alert Alertmanager refuses (%s): %s", one, alert)
        self._count(posts=1, alerts_posted=accepted, alerts_rejected=rejected, post_failures=1 if rejected else 0)
        with self._lock:
            self.mapper.counters = replace(self.mapper.counters, last_post_ts=self._clock())

    # -- metrics ---------------------------------------------------------------------------------------------
    def push_metrics(self) -> bool:
        return push_self_metrics(self.settings, PUBLISHER_JOB, self._registry)

    def _push_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.prometheus.push_interval_s):
            self.push_metrics()

    # -- main loop -------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume, post and commit until ``stop`` is set."""
        kafka, alerting = self.settings.kafka, self.settings.alerting
        topic = kafka.anomalies_topic
        try:  # subscribing to a missing topic would log an error at every poll
            ensure_topics(kafka, topics=[topic])
        except RuntimeError as exc:
            log.warning("could not check the topic (%s); consuming anyway", exc)
        pusher = threading.Thread(target=self._push_loop, args=(stop,), name="alert-publisher-metrics", daemon=True)
        pusher.start()
        if not self.rebuild(stop):
            self.client.close()
            return
        consumer = make_consumer(kafka, alerting.publisher_consumer_group)
        log.info(
            "publishing %s -> Alertmanager %s (group %s)",
            topic,
            self.client.base_url,
            alerting.publisher_consumer_group,
        )
        next_repost = time.monotonic()  # at once: refresh the endsAt of rebuilt alerts
        last_post = time.monotonic()
        try:
            for batch in consume_batches(
                consumer, [topic], stop, max_messages=MAX_POLL_MESSAGES, timeout_s=POLL_TIMEOUT_S
            ):
                now = self._clock()
                values = [m.value() for m in batch if m.value() is not None]
                with self._lock:
                    alerts = self.mapper.apply(values, now)
                    if time.monotonic() >= next_repost:
                        next_repost = time.monotonic() + alerting.repost_interval_s
                        pending = {_label_key(a): a for a in self.mapper.firing_alerts(now)}
                        alerts = list((pending | {_label_key(a): a for a in alerts}).values())
                if alerts or time.monotonic() - last_post >= HEARTBEAT_S:
                    if not self.post(alerts, stop):
                        break  # stopped while Alertmanager is down: nothing of this batch is committed
                    last_post = time.monotonic()
                if batch:
                    self._commit(consumer, batch)
        finally:
            consumer.close()
            self.push_metrics()
            self.client.close()
            log.info("alert publisher stopped: %s", self.counters)

    def _commit(self, consumer: Consumer, messages: list[Message]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            next_offsets[key] = max(next_offsets.get(key, 0), m.offset() + 1)
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()], asynchronous=False)
        except KafkaException as exc:  # re-read later: re-posting is harmless, replayed windows are skipped
            log.warning("offset commit failed (the verdicts will be re-read; alerts are already posted): %s", exc)


def _label_key(alert: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(alert["labels"].items()))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = stop_event_on_signals()
    settings = get_settings()
    try:
        AlertPublisher(settings).run(stop)
    except (AlertmanagerError, KafkaException, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
