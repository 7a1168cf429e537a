"""Pages counted from verdicts replayed through the alert policy (operations/evaluate/pages.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from operations.evaluate.pages import page_scorecard, page_summary, replay_alerts
from vigil.settings import Settings

W = 5000
T0 = 1_795_564_800_000
MACHINES = pd.DataFrame(
    {"equipment_id": ["a", "b", "c"], "site": ["s1", "s1", "s2"], "equipment_type": ["pump", "pump", "fan"]}
)


def verdicts(flags: dict[str, dict[int, tuple[str, tuple[str, ...]]]], n: int) -> pd.DataFrame:
    """One verdict per machine and window 0..n-1; ``flags[machine][window] = (severity, detectors)``."""
    rows = []
    for eid in MACHINES["equipment_id"]:
        for w in range(n):
            severity, detectors = flags.get(eid, {}).get(w, ("normal", ()))
            rows.append(
                {
                    "equipment_id": eid,
                    "window_start_ms": T0 + w * W,
                    "emit": True,
                    "kind": "window",
                    "is_anomaly": severity != "normal",
                    "severity": severity,
                    "score": 1.5 if severity != "normal" else 0.2,
                    "detectors": list(detectors),
                    "rule_hits": [f"temp:{d}" for d in detectors if d in ("threshold_max", "stuck")],
                    "top_sensors": ["temp"] if severity != "normal" else [],
                    "dead_sensors": [],
                    "model_versions": "",
                    "summary": severity,
                    "last_seen_ms": T0 + (w + 1) * W,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def settings() -> Settings:
    return Settings(alerting={"resolve_after_clear_windows": 2, "page_after_windows": 2, "page_within_windows": 3})


def test_pages_are_counted_per_machine_against_the_faults(settings: Settings) -> None:
    n = 130
    flags = {
        # a: a real fault at windows 10-20 (threshold: pages at once), a second page at 60 is false (> 2 min after).
        "a": {**{w: ("critical", ("threshold_max",)) for w in range(10, 21)}, 60: ("critical", ("threshold_max",))},
        # b: one noisy model window (no page: persistence 2 of 3), then two in a row (a false warning page),
        # which resolves and fires again 5 windows later: chattering.
        "b": {30: ("warning", ("pca_t2q",)), 80: ("warning", ("pca_t2q",)), 81: ("warning", ("pca_t2q",))}
        | {86: ("warning", ("pca_t2q",)), 87: ("warning", ("pca_t2q",))},
    }
    faults = pd.DataFrame(
        {
            "machine": ["a", "c"],
            "category": ["step", "drift"],
            "start_ms": np.array([T0 + 10 * W, T0 + 100 * W], dtype=np.int64),
            "end_ms": np.array([T0 + 21 * W, T0 + 120 * W], dtype=np.int64),
        }
    )
    alerts = replay_alerts(verdicts(flags, n), MACHINES, settings, W)
    card = page_scorecard(alerts, faults, T0, T0 + n * W, MACHINES)

    pages = card.pages[["equipment_id", "severity", "true"]].to_records(index=False).tolist()
    assert pages == [
        ("a", "critical", True),
        ("a", "critical", False),
        ("b", "warning", False),
        ("b", "warning", False),
    ]
    assert card.chattering == 2  # within 10 min of their own resolution: a (37 windows later), b (5)
    assert card.resolved == 4
    assert card.machine_hours == pytest.approx(3 * n * W / 3_600_000)
    assert card.rate("critical", False) == pytest.approx(1000 / card.machine_hours)
    assert card.rate("warning", False) == pytest.approx(2000 / card.machine_hours)
    faults_out = card.faults.set_index("machine")
    assert bool(faults_out.loc["a", "paged"]) and faults_out.loc["a", "delay_s"] == pytest.approx(5.0)
    assert not bool(faults_out.loc["c", "paged"])  # the drift on c was never paged
    summary = page_summary(card)
    assert (summary["false_critical"], summary["false_warning"], summary["faults_paged"]) == (1, 2, 1)
    assert summary["false_by_detector"] == {"pca_t2q": 2, "threshold_max": 1}
    site = {r["site"]: r for r in summary["per_site"]}
    assert site["s1"]["max_per_10_min"] == 4 and site["s1"]["flood_buckets"] == 0  # windows 10, 60, 81, 87
    assert site["s2"]["max_per_10_min"] == 0


def test_no_anomaly_no_page(settings: Settings) -> None:
    alerts = replay_alerts(verdicts({}, 20), MACHINES, settings, W)
    card = page_scorecard(
        alerts, pd.DataFrame(columns=["machine", "category", "start_ms", "end_ms"]), T0, T0 + 20 * W, MACHINES
    )
    assert card.pages.empty and card.resolved == 0 and card.chattering == 0


def test_lead_time_before_a_growing_fault_ends(settings: Settings) -> None:
    n = 100
    # b: a degradation over windows 20-80, paged (threshold) from window 50; c: a drift still running at the run's end.
    flags = {"b": {w: ("critical", ("threshold_max",)) for w in range(50, 81)}}
    faults = pd.DataFrame(
        {
            "machine": ["b", "c", "a"],
            "category": ["degradation", "drift", "step"],
            "start_ms": np.array([T0 + 20 * W, T0 + 90 * W, T0 + 5 * W], dtype=np.int64),
            "end_ms": np.array([T0 + 80 * W, T0 + 200 * W, T0 + 10 * W], dtype=np.int64),
        }
    )
    card = page_scorecard(replay_alerts(verdicts(flags, n), MACHINES, settings, W), faults, T0, T0 + n * W, MACHINES)
    out = card.faults.set_index("machine")
    assert out.loc["b", "complete"] and not out.loc["c", "complete"] and out.loc["a", "complete"]
    # paged at the end of window 50, 31 windows into a 60-window course: 29 windows (145 s) before its end
    assert out.loc["b", "delay_s"] == pytest.approx(155.0) and out.loc["b", "lead_s"] == pytest.approx(145.0)
    assert np.isnan(out.loc["a", "lead_s"])  # a step has no failure point to lead
    by_type = {r["category"]: r for r in page_summary(card)["by_type"]}
    assert (by_type["degradation"]["complete"], by_type["degradation"]["complete_paged"]) == (1, 1)
    assert by_type["degradation"]["lead_min_s"] == pytest.approx(145.0)
    assert (by_type["drift"]["complete"], by_type["drift"]["complete_paged"]) == (0, 0)
    assert np.isnan(by_type["drift"]["lead_p50_s"])
