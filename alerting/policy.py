"""Alert policy: how anomaly verdicts become pages (one incident per machine, opened on evidence that holds).

Consumes ``settings.kafka.anomalies_topic`` (group ``settings.alerting.publisher_consumer_group``): one verdict
per scored (machine, window), normal ones included, plus ``dead_machine`` records
(vigil/contracts.py ANOMALY_JSON_SCHEMA). Each polled batch is parsed at once with pyarrow and folded into
the set of open incidents with pandas; the alert changes it causes go to Alertmanager in one POST.

What a plant lives with is the page, so the unit is the **incident**: one per machine at a time, one alert
``VigilEquipmentAnomaly`` whose label set stays the same from its first page to its resolution. Every detector,
rule, sensor and silence of a machine during the incident is evidence of that one incident (its annotations
say which, updated each window); none of them is a page of its own.

- **Opening.** Hard evidence opens at once: a broken limit (``threshold_min``/``threshold_max``), a frozen
  (``stuck``) or silent sensor (``dead_sensor``), lost samples (``count_drop``), a silent machine
  (``dead_machine``). Soft evidence (a model's score, the z-score, a jump) opens only when the machine's
  verdicts scored at least ``page_min_score`` (x the detector's limit) in ``page_after_windows`` of its last
  ``page_within_windows`` windows: one noisy window, or a score hovering at the limit, is no fault.
- **Labels** (fixed for the incident): alertname, severity, site, equipment_id, equipment_type, source, and
  ``detector`` / ``sensor`` of the evidence that opened it (hard evidence first; ``sensor="*"`` for the whole
  machine: Alertmanager drops empty label values). startsAt is the start of the window that opened it.
- **Severity.** A critical window of a qualifying verdict escalates the incident: the critical alert is a second
  label set (severity is a label), posted at once; the warning one keeps firing, muted by Alertmanager's
  inhibit rule (critical mutes warning with equal alertname, equipment_id, detector, sensor:
  flink-conf/prometheus/alertmanager.yml); both resolve together. An incident never de-escalates.
- **Resolution** (hysteresis): after ``resolve_after_clear_windows`` consecutive window verdicts of the machine
  without any anomaly. Until then an anomalous window of any kind keeps the incident open, so a fault hovering
  at a limit is one incident, not a stream of firing/resolved pairs.

Firing alerts are re-posted every ``repost_interval_s`` with a fresh ``endsAt = now + alert_ttl_s``, so the
alerts of a dead publisher expire by themselves. When there is nothing to post, the publisher sends an empty POST
now and then to prove Alertmanager reachable.
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
SOURCE = "vigil-scoring"
# Evidence that opens an incident at once; anything else in ``detectors`` (models, zscore, rate_of_change) is soft.
# In order of preference for the incident's detector label.
HARD_EVIDENCE = ("dead_machine", "threshold_max", "threshold_min", "stuck", "dead_sensor", "count_drop")
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
VERDICT_SCHEMA = pa.schema(ANOMALY_JSON_SCHEMA.field(name) for name in _FIELDS)
_STATE_DTYPES: dict[str, Any] = {
    "equipment_id": object,
    "site": object,
    "equipment_type": object,
    "detector": object,  # the evidence that opened the incident (a label: fixed for the incident)
    "sensor": object,
    "starts_ms": np.int64,
    "warning": bool,
    "critical": bool,  # which severities of the incident fired
    "clear": np.int64,  # consecutive window verdicts of the machine without an anomaly
    "win_start_ms": np.int64,
    "win_end_ms": np.int64,  # newest anomalous window
    "summary": object,
    "description": object,
}
_UPDATED = ["site", "equipment_type", "win_start_ms", "win_end_ms", "summary", "description"]
_WINDOW_BITS = 63  # the per-machine history of anomalous windows is an int64 bit mask


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
    options = pa_json.ParseOptions(explicit_schema=VERDICT_SCHEMA, unexpected_field_behavior="ignore")
    try:
        table = pa_json.read_json(io.BytesIO(b"\n".join(values)), parse_options=options)
        return table.select(VERDICT_SCHEMA.names), 0
    except pa.ArrowInvalid:
        tables, bad = [], 0
        for value in values:
            try:
                tables.append(pa_json.read_json(io.BytesIO(value), parse_options=options).select(VERDICT_SCHEMA.names))
            except pa.ArrowInvalid:
                bad += 1
        return (pa.concat_tables(tables) if tables else VERDICT_SCHEMA.empty_table()), bad


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
        self.after_windows = alerting.page_after_windows
        self.within_windows = alerting.page_within_windows
        self.min_score = alerting.page_min_score
        self.ttl_s = alerting.alert_ttl_s
        self.console_url = alerting.console_url.rstrip("/")
        self.critical_ratio = settings.scoring.critical_ratio
        self.active = _empty_state()
        self.last_start = pd.Series(dtype=np.int64)  # newest window_start_ms processed, per machine
        # Per machine: bit i of mask = its window i windows before window_start_ms was anomalous.
        self.recent = pd.DataFrame({"mask": pd.Series(dtype=np.int64), "window_start_ms": pd.Series(dtype=np.int64)})
        self.counters = PublisherCounters()

    def _count(self, **changes: int) -> None:
        current = self.counters
        self.counters = replace(current, **{k: getattr(current, k) + v for k, v in changes.items()})

    # -- verdicts -> frame -------------------------------------------------------------------------------------
    def _frame(self, table: pa.Table, bad: int, consumed: int) -> pd.DataFrame:
        """Valid, new verdicts of a batch in processing order, with their annotation text, one row each."""
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
        self._count(verdicts_consumed=consumed, bad_verdicts=bad, stale_verdicts=valid - len(frame))
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

    # -- one step: at most one verdict per machine -----------------------------------------------------------
    def _evidence(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per row: anomalous (an anomalous window or a silent machine) and whether it carries hard evidence."""
        anomalous = (rows["is_anomaly"] | (rows["kind"] == "dead_machine")).to_numpy(bool)
        fired = _explode(rows.reset_index(drop=True).reset_index(), "detectors", keep=["index"])
        hard_rows = fired.loc[fired["value"].isin(HARD_EVIDENCE), "index"].to_numpy(np.int64)
        hard = np.zeros(len(rows), dtype=bool)
        hard[hard_rows] = True
        return anomalous, anomalous & hard

    def _persistent(self, rows: pd.DataFrame, anomalous: np.ndarray) -> np.ndarray:
        """Shift this window into each machine's history; whether k of its last n windows were anomalous.

        A machine's history moves by the windows since its previous verdict, so windows without a verdict (a
        silent machine, a gap) count as not anomalous.
        """
        n = self.within_windows
        ids = rows["equipment_id"]
        start = rows["window_start_ms"].to_numpy(np.int64)
        width = np.maximum(rows["window_end_ms"].to_numpy(np.int64) - start, 1)
        previous = self.recent.reindex(ids.to_numpy())
        since = (start - previous["window_start_ms"].fillna(np.iinfo(np.int64).min // 2).to_numpy(np.int64)) // width
        shift = np.clip(since, 1, _WINDOW_BITS)
        mask = np.where(shift >= n, 0, previous["mask"].fillna(0).to_numpy(np.int64) << np.minimum(shift, n))
        mask = (mask | anomalous.astype(np.int64)) & np.int64((1 << n) - 1)
        update = pd.DataFrame({"mask": mask, "window_start_ms": start}, index=ids.to_numpy())
        self.recent = pd.concat([self.recent[~self.recent.index.isin(update.index)], update])
        count = sum(((mask >> b) & 1) for b in range(n))
        return np.asarray(count >= self.after_windows)

    def _step(self, rows: pd.DataFrame, now_ms: int) -> pd.DataFrame:
        """Fold one verdict per machine into the open incidents; returns the changed ones (``resolved``)."""
        rows = rows.reset_index(drop=True)
        anomalous, hard = self._evidence(rows)
        # Soft evidence counts towards opening only at page_min_score x its detector's limit; once open, any
        # anomalous window holds the incident (hysteresis).
        strong = hard | (anomalous & (rows["score"].fillna(0.0).to_numpy(np.float64) >= self.min_score))
        persistent = self._persistent(rows, strong)
        qualifies = strong & (hard | persistent)
        critical_now = (rows["severity"] == "critical").to_numpy()
        active = self.active.set_index("equipment_id")
        ids = rows["equipment_id"]
        is_open = ids.isin(active.index).to_numpy()
        new = qualifies & ~is_open
        kept = is_open & anomalous
        clear_now = is_open & ~anomalous & (rows["kind"] == "window").to_numpy()

        verdict = rows.set_index("equipment_id")[_UPDATED]
        kept_ids = ids[kept].to_numpy()
        active.loc[kept_ids, _UPDATED] = verdict.loc[kept_ids].to_numpy()
        active.loc[kept_ids, "clear"] = 0
        was_critical = active["critical"].reindex(ids, fill_value=False).to_numpy(bool)
        escalated_ids = ids[is_open & qualifies & critical_now & ~was_critical].to_numpy()
        active.loc[escalated_ids, "critical"] = True
        cleared_ids = ids[clear_now].to_numpy()
        active.loc[cleared_ids, "clear"] = active.loc[cleared_ids, "clear"].to_numpy(np.int64) + 1
        resolved_ids = cleared_ids[active.loc[cleared_ids, "clear"].to_numpy(np.int64) >= self.clear_windows]

        opening = rows[new]
        lead = [
            _lead(list(d), list(h), list(s), str(t))
            for d, h, s, t in zip(
                opening["detectors"], opening["rule_hits"], opening["dead_sensors"], opening["first_top"], strict=True
            )
        ]
        opened = opening[["equipment_id", *_UPDATED]].assign(
            detector=[d for d, _ in lead],
            sensor=[s for _, s in lead],
            starts_ms=np.minimum(opening["win_start_ms"].to_numpy(np.int64), now_ms),
            warning=~critical_now[new],
            critical=critical_now[new],
            clear=0,
        )
        active = active.reset_index()
        resolved = active["equipment_id"].isin(resolved_ids).to_numpy()
        changed = pd.concat(
            [
                opened.assign(resolved=False),
                # An escalation posts only the new critical alert; the warning one is already in Alertmanager.
                active[active["equipment_id"].isin(escalated_ids).to_numpy() & ~resolved].assign(
                    warning=False, resolved=False
                ),
                active[resolved].assign(resolved=True),
            ],
            ignore_index=True,
        )
        state = pd.concat([active[~resolved], opened], ignore_index=True)
        self.active = state[list(_STATE_DTYPES)].astype(_STATE_DTYPES).reset_index(drop=True)
        return changed[[*_STATE_DTYPES, "resolved"]]

    def apply(self, values: Sequence[bytes], now: float) -> list[dict[str, Any]]:
        """Fold a polled batch of verdict JSON values into the active set; returns the alerts to POST."""
        if not values:
            return []
        table, bad = parse_verdicts(values)
        return self.apply_table(table, now, bad=bad, consumed=len(values))

    def apply_table(
        self, table: pa.Table, now: float, bad: int = 0, consumed: int | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`apply` for verdicts already in a table of the contract's schema (``vigil evaluate`` replays)."""
        frame = self._frame(
            table.select(VERDICT_SCHEMA.names), bad, table.num_rows + bad if consumed is None else consumed
        )
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
        # One change per incident: its last state, posting every severity any of its steps posted.
        posted = changed.groupby("equipment_id", sort=False)[["warning", "critical"]].transform("any")
        changed = changed.assign(warning=posted["warning"], critical=posted["critical"])
        changed = changed[~changed.duplicated("equipment_id", keep="last")]
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
        """Alertmanager v2 postable alerts: one per fired severity of each incident."""
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
            per_severity[["severity", "site", "equipment_id", "equipment_type", "sensor", "detector"]]
            .assign(alertname=ALERT_ANOMALY, source=SOURCE)
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
        """Rebuild the open incidents from Alertmanager's alerts (GET /alerts); returns how many."""
        rows = [
            {
                **alert.get("labels", {}),
                **{"a_" + k: v for k, v in alert.get("annotations", {}).items()},
                "startsAt": alert.get("startsAt", ""),
            }
            for alert in alerts
            if alert.get("labels", {}).get("source") == SOURCE
            and alert.get("labels", {}).get("alertname") == ALERT_ANOMALY
        ]
        if not rows:
            return 0
        cols = [
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
        found = found[found["equipment_id"].notna()]
        found = found.fillna(
            {
                "equipment_type": "",
                "site": "",
                "sensor": WHOLE_MACHINE,
                "detector": "",
                "a_summary": "",
                "a_description": "",
                "severity": "warning",
            }
        )
        found["warning"] = found["severity"] != "critical"
        found["critical"] = found["severity"] == "critical"
        found["starts_ms"] = _ms(found["startsAt"])
        found["win_start_ms"] = _ms(found["a_window_start"].fillna(""))
        found["win_end_ms"] = _ms(found["a_window_end"].fillna(""))
        state = found.groupby("equipment_id", as_index=False, sort=False).agg(
            site=("site", "last"),
            equipment_type=("equipment_type", "last"),
            detector=("detector", "first"),
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
        self.active = pd.concat([self.active, state], ignore_index=True).drop_duplicates("equipment_id", keep="last")
        self.active = self.active.reset_index(drop=True)
        self.last_start = (
            pd.concat([self.last_start, self.active.groupby("equipment_id")["win_start_ms"].max()])
            .groupby(level=0)
            .max()
        )
        self._set_firing()
        return len(state)


def _lead(detectors: list[str], rule_hits: list[str], dead_sensors: list[str], first_top: str) -> tuple[str, str]:
    """(detector, sensor) labels of a new incident: the strongest evidence of its first window."""
    for name in HARD_EVIDENCE:
        if name not in detectors:
            continue
        if name == "dead_machine":
            return name, WHOLE_MACHINE
        if name == "dead_sensor":
            return name, dead_sensors[0] if dead_sensors else WHOLE_MACHINE
        return name, _hit_sensor(rule_hits, name)
    name = detectors[0] if detectors else "anomaly"
    if name in RULE_NAMES:
        return name, _hit_sensor(rule_hits, name)
    return name, first_top or WHOLE_MACHINE


def _hit_sensor(rule_hits: list[str], rule: str) -> str:
    for hit in rule_hits:
        sensor, _, name = hit.rpartition(":")
        if name == rule:
            return sensor or WHOLE_MACHINE
    return WHOLE_MACHINE
