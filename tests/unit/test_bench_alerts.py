"""`vigil bench alerts`: the relay's delivered outbox rows become the pages the scorecard counts."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import count

import pandas as pd

from alerting.diagnoses import FOLLOW_UP_ALERTNAME
from alerting.store import DEAD, DELIVERED, Delivery
from operations.bench.alerts import delivered_alerts, recipient_load
from operations.evaluate.pages import page_scorecard

_ids = count(1)
T0 = 1_800_000_000.0  # seconds


def _row(
    status: str,
    delivered_s: float | None,
    *,
    machine: str = "pump-0001",
    recipient: str = "oncall-a",
    alertname: str = "VigilAnomaly",
    severity: str = "critical",
    state: str = DELIVERED,
    starts: str = "2027-01-15T08:00:00Z",
) -> Delivery:
    labels = {"alertname": alertname, "severity": severity, "site": "site-1", "sensor": "vibration_rms"}
    if machine:
        labels |= {"equipment_id": machine, "detector": "pca_t2q"}
    alert = {"status": status, "labels": labels, "startsAt": starts, "fingerprint": f"fp-{machine}-{alertname}"}
    return Delivery(
        id=next(_ids),
        receiver="slack",
        recipient=recipient,
        address="#site-1",
        fingerprint=alert["fingerprint"],
        alert_status=status,
        starts_at=starts,
        alertname=alertname,
        equipment_id=machine,
        site="site-1",
        severity=severity,
        alert_json=json.dumps(alert),
        external_url="",
        story_key="",
        state=state,
        attempts=1,
        created_at=T0,
        updated_at=T0,
        delivered_at=delivered_s,
        reason=None,
        last_error=None,
        last_status=200,
    )


def test_one_page_per_alert_whatever_the_recipients_and_updates_apart() -> None:
    rows = [
        _row("firing", T0 + 10, recipient="oncall-a"),
        _row("firing", T0 + 8, recipient="oncall-b"),  # the same alert to a second person: the same page, earlier
        _row("resolved", T0 + 70),
        _row("firing", T0 + 20, machine="pump-0002", state=DEAD),  # never reached anyone: not a page
        _row("firing", T0 + 30, machine="pump-0003", alertname=FOLLOW_UP_ALERTNAME),  # a diagnosis update
        _row("firing", T0 + 31, machine="pump-0003", alertname=FOLLOW_UP_ALERTNAME, recipient="oncall-b"),
        _row("firing", T0 + 40, machine="", alertname="VigilPipelineStalled"),  # self-monitoring
        _row("firing", T0 + 41, machine="", alertname="VigilPipelineStalled", recipient="oncall-b"),
        _row("firing", T0 + 5000, machine="pump-0004"),  # after the scored part
    ]
    frame, system, updates = delivered_alerts(rows, int(T0 * 1000), int((T0 + 600) * 1000))
    assert frame[["equipment_id", "firing", "at_ms"]].values.tolist() == [
        ["pump-0001", True, int((T0 + 8) * 1000)],
        ["pump-0001", False, int((T0 + 70) * 1000)],
    ]
    assert system == {"VigilPipelineStalled": 1}
    assert updates == 1


def test_delivered_pages_score_against_the_faults() -> None:
    first_ms = int(T0 * 1000)
    rows = [
        _row("firing", T0 + 30, machine="pump-0001"),  # during its fault: true
        _row("firing", T0 + 300, machine="pump-0002", severity="warning"),  # no fault: false warning
    ]
    frame, _, _ = delivered_alerts(rows, first_ms, first_ms + 600_000)
    faults = pd.DataFrame(
        {"machine": ["pump-0001"], "category": ["step"], "start_ms": [first_ms + 20_000], "end_ms": [first_ms + 80_000]}
    )
    machines = pd.DataFrame({"equipment_id": ["pump-0001", "pump-0002"], "site": ["site-1", "site-1"]})
    card = page_scorecard(frame, faults, first_ms, first_ms + 600_000, machines)
    assert card.pages["true"].tolist() == [True, False]
    assert card.faults["paged"].tolist() == [True]
    assert card.faults["delay_s"].tolist() == [10.0]


def test_recipient_load_counts_messages_not_alerts_per_10_minutes() -> None:
    first_ms = int(T0 * 1000)
    # One webhook's batch: one message with three machines.
    grouped = [replace(_row("firing", T0 + 60, machine=f"pump-{i:04d}"), batch_key="batch-1") for i in range(3)]
    rows = [
        *grouped,
        *[_row("firing", T0 + 120 + i, machine=f"fan-{i:04d}") for i in range(11)],  # 11 more in the first bucket
        _row("firing", T0 + 700, machine="motor-0001"),  # second bucket
        _row("resolved", T0 + 710, machine="motor-0001"),  # not a notification of a new alert
        _row("firing", T0 + 720, machine="motor-0001", alertname=FOLLOW_UP_ALERTNAME),  # an update, not counted
        _row("firing", T0 + 30, machine="motor-0002", recipient="+15550000001"),
    ]
    load = {r["recipient"]: r for r in recipient_load(rows, first_ms, first_ms + 1_200_000)}
    assert load["oncall-a"]["messages"] == 13
    assert load["oncall-a"]["max_per_10_min"] == 12 and load["oncall-a"]["flood_buckets"] == 1
    assert load["oncall-a"]["mean_per_10_min"] == 6.5
    assert load["+15550000001"]["messages"] == 1 and load["+15550000001"]["flood_buckets"] == 0
