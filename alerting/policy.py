"""Alert policy: how anomaly verdicts become Alertmanager alerts (identity, severity, resolution).

Consumes ``settings.kafka.anomalies_topic`` (group ``settings.alerting.publisher_consumer_group``): one verdict
per scored (machine, window), normal ones included, plus ``dead_machine`` records
(vigil/contracts.py ANOMALY_JSON_SCHEMA). Each polled batch is parsed at once with pyarrow and folded into
the set of active alerts with pandas; the alert changes it causes go to Alertmanager in one POST.

Alert identity (Alertmanager identifies an alert by its label set):

- ``VigilEquipmentAnomaly``, one alert per condition of an anomalous window verdict: each rule hit
  ``<sensor>:<rule>`` -> ``{detector=<rule>, sensor=<sensor>}``; each dead sensor -> ``{detector=dead_sensor,
  sensor}``; each model in ``detectors`` (whatever the job scores, e.g. pca_t2q) -> ``{detector=<model>, sensor=<the
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
post, the publisher sends an empty POST now and then to prove Alertmanager reachable.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from connectors.alertmanager import (
    rfc3339,
)
from vigil.contracts import ANOMALY_JSON_SCHEMA, ANOMALY_KINDS, SEVERITIES
from vigil.rules import RULE_NAMES
from vigil.settings import Settings

log = logging.getLogger(__name__)

ALERT_ANOMALY = "VigilEquipmentAnomaly"
ALERT_DEAD = "VigilMachineDead"
SOURCE = "vigil-scoring"
# What in a verdict's ``detectors`` is not a model: the rules and silence. Anything else is a model (whichever
# detectors the registry declares), whose alert keeps the sensor of its first window.
NOT_MODELS = (*RULE_NAMES, "dead_sensor", "dead_machine")
WHOLE_MACHINE = "*"  # sensor label of machine-wide alerts (an empty label value would be dropped)

_FIELDS = (
    "equipment_id",
    "site",
    "equipment_type",
    "window_start_ms",
    "window_end_ms",
    "kind",
    "is_anomaly",
    "severity",
    "score",
    "detectors",
    "rule_hits",
    "top_sensors",
    "dead_sensors",
    "model_versions",
    "summary",
    "last_seen_ms",
    "emitted_at_ms",
)
_SCHEMA = pa.schema(ANOMALY_JSON_SCHEMA.field(name) for name in _FIELDS)
KEY = ["equipment_id", "alertname", "detector", "cond_sensor"]
_STATE_DTYPES: dict[str, Any] = {
    "equipment_id": object,
    "alertname": object,
    "detector": object,
    "cond_sensor": object,  # the sensor part of the identity: "" for models (their sensor label is sticky)
    "site": object,
    "equipment_type": object,
    "sensor": object,
    "starts_ms": np.int64,
    "warning": bool,
    "critical": bool,  # which severities of the condition fired
    "clear": np.int64,  # consecutive window verdicts of the machine without the condition
    "win_start_ms": np.int64,
    "win_end_ms": np.int64,  # newest window that had the condition
    "summary": object,
    "description": object,
}
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
            "Score "
            + score
            + " (normalised to each detector's limit: alarm at 1.0, critical at "
            + str(float(self.critical_ratio))
            + ").",
            "",
        )
        window_text = (
            score_text
            + np.where(frame["top_text"] != "", " Top sensors: " + frame["top_text"] + ".", "")
            + np.where(frame["hits_text"] != "", " Rule hits: " + frame["hits_text"] + ".", "")
            + np.where(
                frame["model_versions"].fillna("") != "",
                " Models: " + frame["model_versions"].fillna("") + ".",
                " Models: none live (rules only).",
            )
        )
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
        fired = fired[~fired["value"].isin(NOT_MODELS)]
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
        held = (
            pd.MultiIndex.from_arrays([merged["equipment_id"], merged["sensor"]]).isin(pairs_now)
            & (merged["alertname"] == ALERT_ANOMALY).to_numpy()
        )
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
        found["cond_sensor"] = found["sensor"].where(found["detector"].isin(NOT_MODELS), "")
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
