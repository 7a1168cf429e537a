"""Agents' diagnoses in alert messages and follow-ups: parsing insights, who has read what, what people see."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerting.diagnoses import (
    FOLLOW_UP_ALERTNAME,
    Diagnosis,
    follow_up_alert,
    parse_insights,
    with_diagnoses,
)
from alerting.messages import MessageContext, slack_group_message, slack_message, sms_group_text, sms_text
from alerting.payload import Alert
from alerting.store import DELIVERED, NewDelivery, Store

EPISODE_START = datetime(2026, 3, 2, 8, 15, 0, tzinfo=UTC)
START_MS = int(EPISODE_START.timestamp() * 1000)
CTX = MessageContext(console_url="http://console.example:18501", sms_max_chars=306)


def insight(agent: str, closed: bool = True, **fields: Any) -> bytes:
    record = {
        "equipment_id": "pump-0042",
        "site": "site-1",
        "equipment_type": "pump",
        "agent": agent,
        "kind": {"diagnostic": "diagnosis", "maintenance": "maintenance"}.get(agent, agent),
        "episode_id": "ep-1",
        "window_start_ms": START_MS,
        "window_end_ms": START_MS + 30_000,
        "closed": closed,
        "title": "Bearing wear (vibration_rms), 82% sure",
        "severity": "warning",
        "confidence": 0.82,
        "fault_type": "bearing_wear",
        "sensors": ["vibration_rms"],
        "details": "{}",
        "emitted_at_ms": START_MS,
    }
    record.update(fields)
    return orjson.dumps(record)


def diagnosis(
    closed: bool = True,
    fault: str = "bearing_wear",
    title: str = "Bearing wear (vibration_rms), 82% sure",
    action: str = "",
) -> Diagnosis:
    return Diagnosis(
        "pump-0042",
        "ep-1",
        "site-1",
        "pump",
        START_MS,
        START_MS + 30_000,
        closed,
        fault,
        title,
        0.82,
        ("vibration_rms",),
        action,
    )


def alert(
    fingerprint: str = "f1", start: datetime = EPISODE_START, machine: str = "pump-0042", severity: str = "critical"
) -> Alert:
    return Alert(
        status="firing",
        startsAt=start,
        fingerprint=fingerprint,
        labels={
            "alertname": "VigilEquipmentAnomaly",
            "severity": severity,
            "site": "site-1",
            "equipment_id": machine,
            "equipment_type": "pump",
            "sensor": "vibration_rms",
            "detector": "threshold_max",
        },
        annotations={"summary": "vibration_rms above its limit (9.1 > 7.1 mm/s)"},
    )


def test_parse_insights_pairs_the_diagnosis_with_the_maintenance_action_of_the_same_analysis() -> None:
    details = orjson.dumps({"actions": ["Measure vibration spectrum at the bearing housings", "Re-grease"]}).decode()
    records = [
        insight("diagnostic", closed=False, title="Preliminary: Bearing wear (vibration_rms), 70% sure"),
        insight("maintenance", closed=False, title="Bearing wear: act within 4 h; failure in ~6 h", details=details),
        insight("root_cause", title="Explained by vibration_rms"),  # console only
        b"not json",
        orjson.dumps({"agent": "diagnostic"}),  # no machine, no episode
    ]
    found, bad = parse_insights(records)
    assert bad == 2 and len(found) == 1
    d = found[0]
    assert (d.equipment_id, d.episode_id, d.closed, d.fault_type) == ("pump-0042", "ep-1", False, "bearing_wear")
    assert d.action == "act within 4 h; failure in ~6 h: Measure vibration spectrum at the bearing housings"
    assert d.text() == (
        "Bearing wear (vibration_rms), 70% sure (preliminary, episode still going on). "
        "Action: act within 4 h; failure in ~6 h: Measure vibration spectrum at the bearing housings"
    )
    # details that are not JSON text cost the action's first step, not the diagnosis
    odd, bad = parse_insights(
        [insight("diagnostic"), insight("maintenance", title="Overheating: act within 8 h", details=5)]
    )
    assert bad == 0 and odd[0].action == "act within 8 h"


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "relay.db")
    yield s
    s.close()


def page(store: Store, a: Alert, recipient: str = "ops", receiver: str = "slack", delivered: bool = True) -> None:
    result = store.enqueue([NewDelivery(receiver, recipient, f"{recipient}-address", a, "http://am", "b")])
    if delivered:
        for delivery_id in result.queued:
            store.record_attempt(delivery_id, 1, "delivered", status=200)


def test_a_final_diagnosis_is_never_replaced_by_a_late_preliminary_one(store: Store) -> None:
    assert store.save_diagnoses([diagnosis(closed=False, fault="sensor_drift")], margin_s=60) == 1
    assert store.save_diagnoses([diagnosis(closed=True)], margin_s=60) == 1
    assert store.save_diagnoses([diagnosis(closed=False, fault="sensor_drift")], margin_s=60) == 0
    found = store.diagnoses_for([alert()])
    assert found["f1"].closed and found["f1"].fault_type == "bearing_wear"


def test_alerts_belong_to_the_episode_within_the_margin_only(store: Store) -> None:
    store.save_diagnoses([diagnosis()], margin_s=60)  # episode 08:15:00-08:15:30 -> alerts 08:14:00-08:16:30
    inside = alert("in", EPISODE_START + timedelta(seconds=85))
    before = alert("before", EPISODE_START - timedelta(seconds=61))
    after = alert("after", EPISODE_START + timedelta(seconds=91))
    other = alert("other", machine="pump-0043")
    follow = follow_up_alert(diagnosis(), "http://console")
    assert set(store.diagnoses_for([inside, before, after, other, follow])) == {"in"}


def test_each_paged_recipient_gets_one_follow_up_per_conclusion(store: Store) -> None:
    page(store, alert("f1"), "ops")
    page(store, alert("f2", EPISODE_START + timedelta(seconds=10)), "ops")  # same recipient, same episode
    page(store, alert("f1"), "night-phone", receiver="sms")
    page(store, alert("f3"), "pending-one", delivered=False)  # not sent yet: its message will carry it
    assert store.follow_ups() == []  # nothing diagnosed yet
    store.save_diagnoses([diagnosis(closed=False)], margin_s=60)
    due = store.follow_ups()
    assert sorted((f.receiver, f.recipient) for f in due) == [("slack", "ops"), ("sms", "night-phone")]
    items = [
        (f, NewDelivery(f.receiver, f.recipient, f.address, follow_up_alert(f.diagnosis, "http://c"), f.external_url))
        for f in due
    ]
    assert len(store.enqueue_follow_ups(items).queued) == 2
    assert store.follow_ups() == []  # told
    store.save_diagnoses([diagnosis(closed=True)], margin_s=60)
    assert store.follow_ups() == []  # the final analysis agrees: nothing new to read
    store.save_diagnoses([diagnosis(closed=True, fault="overheating", title="Overheating, 64% sure")], margin_s=60)
    changed = store.follow_ups()
    assert {f.recipient for f in changed} == {"ops", "night-phone"}
    assert {f.diagnosis.fault_type for f in changed} == {"overheating"}
    queued = store.find(receiver="sms")
    assert [d.alertname for d in queued] == ["VigilEquipmentAnomaly", FOLLOW_UP_ALERTNAME]


def test_a_message_that_carried_the_diagnosis_needs_no_follow_up(store: Store) -> None:
    store.save_diagnoses([diagnosis()], margin_s=60)
    page(store, alert("f1"), "ops")
    found = store.diagnoses_for([alert("f1")])
    store.mark_told("slack", "ops", list(found.values()))  # what the relay does when it renders the message
    assert store.follow_ups() == []
    assert [d.state for d in store.find("f1")] == [DELIVERED]


def test_messages_carry_the_diagnosis_on_every_channel() -> None:
    d = diagnosis(action="act within 4 h: Re-grease")
    [annotated] = with_diagnoses([alert("f1")], {"f1": d})
    slack = orjson.dumps(slack_message(annotated, CTX)).decode()
    assert "*Diagnosis:* Bearing wear (vibration_rms), 82% sure. Action: act within 4 h: Re-grease" in slack
    sms = sms_text(annotated, CTX)
    assert "Diagnosis: Bearing wear (vibration_rms), 82% sure" in sms and sms.index("Diagnosis") < sms.index("http")
    second = alert("f2", machine="pump-0043")
    group = orjson.dumps(slack_group_message([annotated, second], CTX)).decode()
    assert "pump-0042: Bearing wear" in group and "pump-0043: Bearing" not in group
    assert "Diagnosis: pump-0042: Bearing wear" in sms_group_text([annotated, second], CTX)


def test_the_follow_up_reads_as_an_update_of_the_page() -> None:
    message = follow_up_alert(diagnosis(closed=False, action="act within 4 h: Re-grease"), "http://console.example")
    assert message.label("severity") == "update" and message.startsAt == EPISODE_START
    text = sms_text(message, CTX)
    assert text.startswith("UPDATE: VigilDiagnosis on pump-0042 (site-1) - Bearing wear (vibration_rms), 82% sure")
    assert "Recommended: act within 4 h: Re-grease" in text and "preliminary" in text
    slack = slack_message(message, CTX)
    assert slack["blocks"][0]["text"]["text"].startswith(":mag: UPDATE: VigilDiagnosis on pump-0042")
    # One follow-up per (machine, episode, fault): the same conclusion has the same fingerprint.
    assert follow_up_alert(diagnosis(closed=True), "x").fingerprint == message.fingerprint
    assert follow_up_alert(diagnosis(fault="overheating"), "x").fingerprint != message.fingerprint
