"""Batches: the new alerts of one Alertmanager notification for one recipient go out as one message."""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime, timedelta

import orjson

from alerting.messages import (
    MessageContext,
    email_group_message,
    email_message,
    group_title,
    gsm_length,
    slack_group_message,
    slack_message,
    sms_group_text,
    sms_text,
)
from alerting.payload import Alert
from alerting.relay import MAX_BATCH, batches
from alerting.store import Delivery

STARTED = datetime(2026, 3, 2, 8, 15, 0, tzinfo=UTC)
CTX = MessageContext(console_url="http://console.example:18501", sms_max_chars=160)


def alert(
    machine: str,
    detector: str,
    severity: str = "critical",
    site: str = "site-1",
    status: str = "firing",
    fingerprint: str = "",
) -> Alert:
    ends = STARTED + timedelta(seconds=40) if status == "resolved" else datetime(1, 1, 1, tzinfo=UTC)
    return Alert(
        status=status,
        labels={
            "alertname": "VigilEquipmentAnomaly",
            "severity": severity,
            "site": site,
            "equipment_id": machine,
            "equipment_type": "pump",
            "sensor": "vibration_rms",
            "detector": detector,
        },
        annotations={
            "summary": f"{machine} vibration_rms {detector}",
            "description": "Rule hits: " + detector,
            "console_url": f"http://console.example:18501/?equipment={machine}",
        },
        startsAt=STARTED,
        endsAt=ends,
        generatorURL="",
        fingerprint=fingerprint or f"{machine}-{detector}"[:16],
    )


def test_a_batch_of_one_is_the_single_alert_message() -> None:
    one = alert("pump-0004", "threshold_max")
    assert slack_group_message([one], CTX) == slack_message(one, CTX)
    assert sms_group_text([one], CTX) == sms_text(one, CTX)
    assert str(email_group_message([one], CTX, "v@x", "to@x", ["k"])) == str(
        email_message(one, CTX, "v@x", "to@x", "k")
    )


def test_two_rules_on_one_machine_are_one_message_naming_both() -> None:
    pair = [alert("pump-0004", "rate_of_change", severity="warning"), alert("pump-0004", "threshold_max")]
    assert group_title(pair) == "CRITICAL: 2 alerts on pump-0004 (VigilEquipmentAnomaly)"
    slack = slack_group_message(pair, CTX)
    body = orjson.dumps(slack).decode()
    assert slack["text"].startswith("CRITICAL: 2 alerts on pump-0004")
    # worst first: the critical threshold alert is listed before the warning one
    assert body.index("threshold_max") < body.index("rate_of_change")
    assert "Open machine in console" in body and "?equipment=pump-0004" in body
    sms = sms_group_text(pair, CTX)
    assert sms.startswith("CRITICAL: 2 alerts on pump-0004") and "(site-1)" in sms
    assert "threshold_max" in sms and "rate_of_change" in sms and gsm_length(sms) <= CTX.sms_max_chars


def test_a_storm_at_one_site_is_one_message_listing_machines_and_counting_the_rest() -> None:
    storm = [alert(f"pump-{i:04d}", "threshold_max") for i in range(14)]
    assert group_title(storm) == "CRITICAL: 14 machines at site-1 (VigilEquipmentAnomaly)"
    slack = slack_group_message(storm, CTX)
    body = orjson.dumps(slack).decode()
    assert "pump-0000" in body and "pump-0009" in body and "pump-0010" not in body.split("more")[0][-2000:-1]
    assert "and 4 more" in body
    assert "Open machine in console" not in body  # which machine? each line links its own
    sms = sms_group_text(storm, CTX)
    assert gsm_length(sms) <= CTX.sms_max_chars and sms.startswith("CRITICAL: 14 machines at site-1")
    assert sms.endswith("http://console.example:18501")


def test_resolved_batch_reads_as_resolved_and_email_carries_every_alert() -> None:
    pair = [
        alert("pump-0004", "threshold_max", status="resolved"),
        alert("pump-0004", "rate_of_change", status="resolved"),
    ]
    assert group_title(pair).startswith("RESOLVED: 2 alerts on pump-0004")
    message = email_group_message(pair, CTX, "vigil@plant.example", "ops@plant.example", ["s1", "s2"])
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "[Vigil] RESOLVED: 2 alerts on pump-0004 (VigilEquipmentAnomaly) (site-1)"
    text = parsed.get_content()
    assert text.count("-- Vigil alert ") == 2
    assert set(parsed["X-Vigil-Fingerprint"].split(", ")) == {a.fingerprint for a in pair}


def _row(row_id: int, batch_key: str) -> Delivery:
    return Delivery(
        id=row_id,
        receiver="sms",
        recipient="r",
        address="+1555",
        fingerprint="f",
        alert_status="firing",
        starts_at="",
        alertname="a",
        equipment_id="m",
        site="s",
        severity="critical",
        alert_json="{}",
        external_url="",
        story_key="k",
        state="pending",
        attempts=0,
        created_at=0.0,
        updated_at=0.0,
        delivered_at=None,
        reason=None,
        last_error=None,
        last_status=None,
        batch_key=batch_key,
    )


def test_batches_group_by_key_keep_order_cap_size_and_limit_messages() -> None:
    rows = [_row(1, "w1/a/firing"), _row(2, ""), _row(3, "w1/a/firing"), _row(4, ""), _row(5, "w2/a/firing")]
    assert [[r.id for r in b] for b in batches(rows)] == [[1, 3], [2], [4], [5]]
    assert [[r.id for r in b] for b in batches(rows, limit=2)] == [[1, 3], [2]]
    big = [_row(i, "w/a/firing") for i in range(MAX_BATCH + 3)]
    assert [len(b) for b in batches(big)] == [MAX_BATCH, 3]
