"""Pages, not windows: the verdicts of a labelled run replayed through the alert policy, counted per machine.

A plant judges the system by the notifications that reach people, so the fleet's headline figures are counted
here, after :class:`alerting.policy.AlertMapper` (the publisher's own code) has turned the verdicts into alerts:

- the verdicts are fed window by window, as the publisher receives them (one batch per window of the fleet), with
  ``now`` at the window's end;
- Alertmanager's side is what flink-conf/prometheus/alertmanager.yml routes: a label set that starts firing is
  one notification (critical: Slack and SMS; warning: Slack); a resolution is a follow-up, not a page. Its
  grouping (alertname, site) merges machines into one message: counted here per machine, as the goal is
  stated, which is the upper bound of messages;
- a page is **true** when its machine has a labelled fault active from ``TRUE_BEFORE_MS`` before the fault's
  start to ``TRUE_AFTER_MS`` after its end, else **false**;
- a fault is **paged** when a page of its machine falls in [start, end + ``TRUE_AFTER_MS``]; delay = that page's
  window end - fault start;
- **chattering**: a label set that fires again within ``CHATTER_MS`` of its own resolution;
- per site (one on-call recipient each): notifications (firing pages) per 10-minute bucket, mean and worst;
  a flood is a bucket with more than ``FLOOD_PER_10_MIN``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from alerting.policy import VERDICT_SCHEMA, AlertMapper
from edge.simulator.faults import RAMPED, FaultType
from vigil.settings import Settings

TRUE_BEFORE_MS = 30_000
TRUE_AFTER_MS = 120_000
CHATTER_MS = 600_000
BUCKET_MS = 600_000
FLOOD_PER_10_MIN = 10


@dataclass
class PageScorecard:
    pages: pd.DataFrame  # one row per firing notification: equipment_id, site, severity, detector, sensor, at_ms, true
    resolved: int  # resolution follow-ups
    chattering: int  # firings of a label set within CHATTER_MS of its own resolution
    machine_hours: float
    faults: pd.DataFrame  # one row per labelled fault starting in the scored part: paged, delay_s, critical
    per_site: pd.DataFrame  # per site: mean and max notifications per 10 minutes, flood buckets

    def rate(self, severity: str, true: bool) -> float:
        """Pages of a severity per 1,000 machine-hours (true or false ones)."""
        p = self.pages
        n = int(((p["severity"] == severity) & (p["true"] == true)).sum())
        return 1000.0 * n / self.machine_hours if self.machine_hours else float("nan")


def _verdict_table(frame: pd.DataFrame, window_ms: int) -> pa.Table:
    data = {
        "equipment_id": frame["equipment_id"].astype(str),
        "site": frame["site"].astype(str),
        "equipment_type": frame["equipment_type"].astype(str),
        "window_start_ms": frame["window_start_ms"].astype(np.int64),
        "window_end_ms": frame["window_start_ms"].astype(np.int64) + window_ms,
        "kind": frame["kind"],
        "is_anomaly": frame["is_anomaly"].astype(bool),
        "severity": frame["severity"],
        "score": frame["score"].astype(np.float64),
        "detectors": frame["detectors"],
        "rule_hits": frame["rule_hits"],
        "top_sensors": frame["top_sensors"],
        "dead_sensors": frame["dead_sensors"],
        "model_versions": frame["model_versions"].astype(str),
        "summary": frame["summary"].astype(str),
        "last_seen_ms": frame["last_seen_ms"].astype(np.int64),
        "emitted_at_ms": frame["window_start_ms"].astype(np.int64) + window_ms,
    }
    return pa.Table.from_pydict({k: pa.array(v.tolist(), type=VERDICT_SCHEMA.field(k).type) for k, v in data.items()})


def replay_alerts(verdicts: pd.DataFrame, machines: pd.DataFrame, settings: Settings, window_ms: int) -> pd.DataFrame:
    """Every alert the publisher would post, window by window: labels, firing/resolved and the window end."""
    v = verdicts.loc[verdicts["emit"].to_numpy(bool)]
    v = v.merge(machines[["equipment_id", "site", "equipment_type"]], on="equipment_id", how="left")
    v = v.sort_values(["window_start_ms", "equipment_id"], kind="stable")
    mapper = AlertMapper(settings)
    rows: list[dict[str, object]] = []
    starts = v["window_start_ms"].to_numpy(np.int64)
    cuts = np.flatnonzero(np.diff(starts)) + 1
    for chunk in np.split(np.arange(len(v)), cuts):
        if not len(chunk):
            continue
        batch = v.iloc[chunk]
        end_ms = int(starts[chunk[0]]) + window_ms
        now = end_ms / 1000.0
        for alert in mapper.apply_table(_verdict_table(batch, window_ms), now):
            labels = alert["labels"]
            rows.append(
                {
                    **{k: labels.get(k, "") for k in ("alertname", "severity", "site", "equipment_id")},
                    "detector": labels.get("detector", ""),
                    "sensor": labels.get("sensor", ""),
                    "at_ms": end_ms,
                    "firing": not _resolved(alert, now),
                }
            )
    return pd.DataFrame(
        rows, columns=["alertname", "severity", "site", "equipment_id", "detector", "sensor", "at_ms", "firing"]
    )


def _resolved(alert: dict[str, object], now: float) -> bool:
    ends = pd.Timestamp(str(alert["endsAt"])).timestamp()
    return ends <= now + 1e-3


def page_scorecard(
    alerts: pd.DataFrame, faults: pd.DataFrame, first_ms: int, end_ms: int, machines: pd.DataFrame
) -> PageScorecard:
    """Count pages against the labelled faults (``faults``: machine, category, start_ms, end_ms) of the fleet
    ``machines`` (equipment_id, site) over [first_ms, end_ms)."""
    label = ["alertname", "severity", "equipment_id", "detector", "sensor"]
    alerts = alerts.sort_values("at_ms", kind="stable").reset_index(drop=True)
    alerts["firing"] = alerts["firing"].astype(bool)
    is_firing = alerts["firing"].to_numpy(bool)
    firing = alerts[is_firing].copy()
    resolved = alerts[~is_firing]
    # Chattering: the label set's previous event was its own resolution, less than CHATTER_MS before.
    prev = alerts.groupby(label, sort=False)["at_ms"].shift()
    prev_firing = alerts.groupby(label, sort=False)["firing"].shift()
    chatter = alerts["firing"] & prev_firing.eq(False) & ((alerts["at_ms"] - prev) < CHATTER_MS)
    firing["true"] = _is_true(firing, faults)
    scored = faults[(faults["start_ms"] >= first_ms) & (faults["start_ms"] < end_ms)].copy()
    paged, delay, critical = [], [], []
    for fault in scored.itertuples():
        own = firing[
            (firing["equipment_id"] == fault.machine)
            & (firing["at_ms"] >= fault.start_ms)
            & (firing["at_ms"] <= fault.end_ms + TRUE_AFTER_MS)
        ]
        paged.append(not own.empty)
        delay.append((int(own["at_ms"].min()) - fault.start_ms) / 1000 if not own.empty else np.nan)
        critical.append(bool((own["severity"] == "critical").any()))
    # Lead time: from the first page to the fault's end, where a degradation reaches its failure magnitude;
    # "complete" faults end inside the run (a run cut off at 30 % of a wear course saw 9 % of its signature).
    scored = scored.assign(
        paged=paged,
        delay_s=delay,
        critical=critical,
        complete=scored["end_ms"].to_numpy() <= end_ms,
        lead_s=np.where(
            scored["category"].isin(GROWING).to_numpy(),
            (scored["end_ms"].to_numpy() - scored["start_ms"].to_numpy()) / 1000 - np.asarray(delay, dtype=float),
            np.nan,
        ),
    )
    buckets = firing.assign(bucket=(firing["at_ms"] - first_ms) // BUCKET_MS)
    n_buckets = max(1, int(np.ceil((end_ms - first_ms) / BUCKET_MS)))
    counts = buckets.groupby(["site", "bucket"]).size()
    sites = sorted(set(machines["site"]))
    per_site = pd.DataFrame(
        {
            "mean_per_10_min": [counts.get(s, pd.Series(dtype=int)).sum() / n_buckets for s in sites],
            "max_per_10_min": [int(counts.get(s, pd.Series([0])).max()) for s in sites],
            "flood_buckets": [int((counts.get(s, pd.Series([0])) > FLOOD_PER_10_MIN).sum()) for s in sites],
        },
        index=pd.Index(sites, name="site"),
    )
    hours = len(machines) * (end_ms - first_ms) / 3_600_000
    return PageScorecard(
        pages=firing.reset_index(drop=True),
        resolved=len(resolved),
        chattering=int(chatter.sum()),
        machine_hours=hours,
        faults=scored.reset_index(drop=True),
        per_site=per_site,
    )


def _is_true(pages: pd.DataFrame, faults: pd.DataFrame) -> np.ndarray:
    """Whether each page's machine had a fault active around the page (TRUE_BEFORE_MS / TRUE_AFTER_MS)."""
    out = np.zeros(len(pages), dtype=bool)
    if pages.empty or faults.empty:
        return out
    pairs = (
        pages.reset_index(drop=True)
        .reset_index()
        .merge(faults[["machine", "start_ms", "end_ms"]], left_on="equipment_id", right_on="machine")
    )
    hit = (pairs["at_ms"] >= pairs["start_ms"] - TRUE_BEFORE_MS) & (pairs["at_ms"] <= pairs["end_ms"] + TRUE_AFTER_MS)
    out[pairs.loc[hit, "index"].to_numpy(np.int64)] = True
    return out


# -- output ------------------------------------------------------------------------------------------------
GROWING = (FaultType.DEGRADATION, *RAMPED)  # faults whose signature grows to a failure point at their end
PAGES_NOTE = (
    "Pages = label sets that start firing after the alert policy (alerting.policy.AlertMapper), per machine: "
    "critical -> Slack + SMS, warning -> Slack. True: the machine has a labelled fault active from "
    f"{TRUE_BEFORE_MS // 1000} s before its start to {TRUE_AFTER_MS // 1000} s after its end. A fault is paged when "
    f"a page of its machine falls in \\[start, end + {TRUE_AFTER_MS // 1000} s]; delay = that window's end - start. "
    "Ended in run: the fault's end lies inside the run. Lead (faults that grow to their end: degradation, drift, "
    "overheating): its end, the failure point, - the first page, over those paged (negative: paged after it)."
)


def page_summary(card: PageScorecard) -> dict[str, object]:
    """The page figures as plain data (for --output and the printout)."""
    p, f = card.pages, card.faults
    by_type = (
        f.groupby("category")
        .agg(
            faults=("paged", "size"),
            paged=("paged", "sum"),
            critical=("critical", "sum"),
            delay_p50_s=("delay_s", lambda d: float(np.nanpercentile(d, 50)) if d.notna().any() else float("nan")),
            delay_p95_s=("delay_s", lambda d: float(np.nanpercentile(d, 95)) if d.notna().any() else float("nan")),
            complete=("complete", "sum"),
        )
        .reset_index()
    )
    done = f[f["complete"]]
    by_type["complete_paged"] = by_type["category"].map(done.groupby("category")["paged"].sum()).fillna(0).astype(int)
    lead = done.loc[done["paged"]].groupby("category")["lead_s"]
    by_type["lead_min_s"] = by_type["category"].map(lead.min()).astype(float)
    by_type["lead_p50_s"] = by_type["category"].map(lead.median()).astype(float)
    false = p[~p["true"]]
    return {
        "machine_hours": card.machine_hours,
        "pages": len(p),
        "true_pages": int(p["true"].sum()),
        "false_critical": int((false["severity"] == "critical").sum()),
        "false_warning": int((false["severity"] == "warning").sum()),
        "false_critical_per_1000_machine_hours": card.rate("critical", False),
        "false_warning_per_1000_machine_hours": card.rate("warning", False),
        "machines_falsely_paged": int(false["equipment_id"].nunique()),
        "resolved_followups": card.resolved,
        "chattering": card.chattering,
        "faults": len(f),
        "faults_paged": int(f["paged"].sum()),
        "faults_complete": int(f["complete"].sum()),
        "faults_complete_paged": int((f["complete"] & f["paged"]).sum()),
        "pages_per_paged_fault": float(p["true"].sum() / f["paged"].sum()) if f["paged"].sum() else float("nan"),
        "false_by_detector": {str(k): int(v) for k, v in false["detector"].value_counts().items()},
        "by_type": json_records(by_type),
        "per_site": json_records(card.per_site.reset_index()),
    }


def json_records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()} for row in frame.to_dict("records")
    ]


def print_page_scorecard(card: PageScorecard, console: Console) -> None:
    s = page_summary(card)
    console.print(
        f"[bold]Pages[/] over {s['machine_hours']:,.1f} scored machine-hours: {s['pages']:,} firing notifications, "
        f"{s['true_pages']:,} true; [bold]false critical {s['false_critical']:,} "
        f"({s['false_critical_per_1000_machine_hours']:,.1f} per 1,000 machine-hours), false warning "
        f"{s['false_warning']:,} ({s['false_warning_per_1000_machine_hours']:,.1f} per 1,000 machine-hours)[/] on "
        f"{s['machines_falsely_paged']} machines; {s['faults_paged']} of {s['faults']} faults paged "
        f"({s['faults_complete_paged']} of the {s['faults_complete']} that ended in the run), "
        f"{s['pages_per_paged_fault']:.1f} pages per paged fault; {s['resolved_followups']:,} resolutions, "
        f"{s['chattering']:,} chattering re-fires (within {CHATTER_MS // 60_000} min of their resolution)."
    )
    if s["false_by_detector"]:
        console.print("False pages by detector: " + ", ".join(f"{k} {v}" for k, v in s["false_by_detector"].items()))
    table = Table(title="Faults paged, per type", caption=PAGES_NOTE, caption_justify="left")
    columns = ("fault type", "faults", "paged", "critical", "delay p50 s", "p95 s", "ended in run", "of them paged")
    for col in (*columns, "lead min, p50 (minutes)"):
        table.add_column(col, justify="left" if col == "fault type" else "right")
    for r in s["by_type"]:
        table.add_row(
            str(r["category"]),
            str(r["faults"]),
            str(r["paged"]),
            str(r["critical"]),
            _num(r["delay_p50_s"]),
            _num(r["delay_p95_s"]),
            str(r["complete"]),
            str(r["complete_paged"]),
            f"{_num(r['lead_min_s'] / 60)}, {_num(r['lead_p50_s'] / 60)}" if r["category"] in GROWING else "",
        )
    console.print(table)
    sites = ", ".join(
        f"{r['site']} {r['mean_per_10_min']:.1f} (max {r['max_per_10_min']}, floods {r['flood_buckets']})"
        for r in s["per_site"]
    )
    console.print(f"Notifications per 10 minutes per site (on-call), mean (max, buckets > {FLOOD_PER_10_MIN}): {sites}")


def _num(x: object) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{float(x):.1f}"  # type: ignore[arg-type]
