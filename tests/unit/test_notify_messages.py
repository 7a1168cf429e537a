"""Notification content and on-call routing: what people read, and who gets it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerting.messages import (
    ELLIPSIS,
    GSM_BASIC,
    GSM_EXTENSION,
    MessageContext,
    console_link,
    email_message,
    fit_gsm,
    format_duration,
    gsm_length,
    safe_link,
    slack_group_message,
    slack_message,
    sms_text,
    story_title,
    to_gsm,
)
from alerting.oncall import OnCallConfigError, is_e164, load_oncall, parse_oncall
from alerting.payload import Alert, InvalidWebhook, parse_webhook
from vigil.settings import PROJECT_ROOT

STARTED = datetime(2026, 3, 2, 8, 15, 0, tzinfo=UTC)
CTX = MessageContext(console_url="http://console.example:18501", sms_max_chars=160)


def make_alert(status: str = "firing", labels: dict[str, str] | None = None, **annotations: str) -> Alert:
    base_labels = {
        "alertname": "VigilAnomaly",
        "severity": "critical",
        "site": "site-1",
        "equipment_id": "pump-0042",
        "equipment_type": "pump",
        "sensor": "bearing_temp",
        "detector": "threshold_max",
    }
    notes = {
        "summary": "bearing_temp above its limit (96.2 > 90 degC)",
        "description": "Isolation forest and threshold rule agree for 3 windows",
        "console_url": "http://console.example:18501/?equipment=pump-0042",
    }
    notes.update(annotations)
    ends = STARTED + timedelta(minutes=12, seconds=5) if status == "resolved" else datetime(1, 1, 1, tzinfo=UTC)
    return Alert(
        status=status,
        labels=base_labels if labels is None else labels,
        annotations={k: v for k, v in notes.items() if v},
        startsAt=STARTED,
        endsAt=ends,
        generatorURL="http://prometheus.example:19090/graph?g0.expr=x",
        fingerprint="a1b2c3d4e5f60718",
    )


def texts(message: dict[str, Any]) -> str:
    """Every text of a Block Kit message, for 'is it said somewhere' checks."""
    return orjson.dumps(message).decode()


# -- Slack ------------------------------------------------------------------------------------------------


def test_firing_slack_message_is_block_kit_with_severity_machine_what_why_and_link() -> None:
    message = slack_message(make_alert(), CTX)
    blocks = message["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "actions", "context"]
    header = blocks[0]["text"]
    assert header["type"] == "plain_text"
    assert "CRITICAL: VigilAnomaly on pump-0042" in header["text"]
    assert len(header["text"]) <= 150
    story = blocks[1]["text"]["text"]
    assert "*What:* bearing_temp above its limit" in story
    assert "*Why:* Isolation forest and threshold rule agree" in story
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in blocks[2]["fields"]}
    assert fields["*Machine*"] == "pump-0042 (pump)"
    assert fields["*Site*"] == "site-1"
    assert fields["*Sensor*"] == "bearing_temp"
    assert fields["*Detector*"] == "threshold_max"
    assert fields["*Severity*"] == "CRITICAL"
    assert len(blocks[2]["fields"]) <= 10
    button = blocks[3]["elements"][0]
    assert button["url"] == "http://console.example:18501/?equipment=pump-0042"
    assert button["style"] == "danger"
    assert "a1b2c3d4e5f60718" in blocks[4]["elements"][0]["text"]
    # The notification preview says the same thing in one line.
    assert message["text"].startswith("CRITICAL: VigilAnomaly on pump-0042 - bearing_temp above")


def test_resolved_slack_message_ends_the_same_story() -> None:
    firing = slack_message(make_alert(), CTX)
    resolved = slack_message(make_alert("resolved"), CTX)
    title = story_title(make_alert())
    assert title == "VigilAnomaly on pump-0042"
    assert title in firing["blocks"][0]["text"]["text"]
    assert f"RESOLVED: {title}" in resolved["blocks"][0]["text"]["text"]
    assert "CRITICAL" not in resolved["blocks"][0]["text"]["text"]
    assert "*Resolved* after *12 min 5 s*" in resolved["blocks"][1]["text"]["text"]
    fields = texts(resolved)
    assert "Lasted" in fields and "Ended" in fields
    assert "style" not in resolved["blocks"][3]["elements"][0]  # no red button on good news


def test_slack_message_escapes_control_characters_and_tolerates_missing_fields() -> None:
    alert = make_alert(
        labels={"alertname": "VigilPipelineStalled"},
        summary="lag <5 min> & rising",
        description="",
        console_url="",
        runbook_url="https://wiki.example/runbook",
    )
    message = slack_message(alert, CTX)
    text = texts(message)
    assert "lag &lt;5 min&gt; &amp; rising" in text
    assert "<5 min>" not in text
    assert "Machine" not in text and "Sensor" not in text  # labels that are not there are not shown
    assert "Runbook url" in text and "https://wiki.example/runbook" in text  # unknown annotations are shown
    header = message["blocks"][0]["text"]["text"]
    assert "WARNING: VigilPipelineStalled" in header  # no severity label: a warning
    actions = next(b for b in message["blocks"] if b["type"] == "actions")
    assert actions["elements"][0]["url"] == "http://console.example:18501"  # no machine: the console itself


def test_labels_cannot_inject_mentions_or_links_into_any_message() -> None:
    """Every label and annotation reaches Slack escaped (no <!channel>, no <url|text> of the sender's), and
    links point only into the configured console."""
    hostile = "<!channel> <https://evil.example/login|Open console>"
    labels = {
        "alertname": f"VigilAnomaly{hostile}",
        "severity": "critical",
        "site": hostile,
        "equipment_id": f"pump-0042{hostile}",
        "equipment_type": hostile,
        "sensor": hostile,
        "detector": hostile,
    }
    alerts = [
        make_alert(labels=labels, summary=hostile, description=hostile, diagnosis=hostile, note=hostile),
        make_alert(labels={**labels, "equipment_id": "fan-0001"}, summary=hostile),
    ]
    alerts[0] = alerts[0].model_copy(update={"generatorURL": "https://prometheus.example/graph|evil>"})
    for message in (slack_message(alerts[0], CTX), slack_group_message(alerts, CTX)):
        body = orjson.dumps(message).decode()
        assert "<!channel>" not in body and "<https://evil.example" not in body
        assert "evil>" not in body  # a generator URL that would break out of <url|text> is left out
        assert "&lt;!channel&gt;" in body
        buttons = [e["url"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
        links = re.findall(r"<(https?://[^|>]+)\|", body)
        assert all(u.startswith("http://console.example:18501/") for u in buttons + links), (buttons, links)
    foreign = make_alert(console_url="https://evil.example/?equipment=pump-0042")
    assert console_link(foreign, CTX) == "http://console.example:18501/?equipment=pump-0042"
    assert "evil.example" not in sms_text(foreign, CTX)
    assert not safe_link("http://console.example:18501/x|y", "http://console.example:18501")
    assert not safe_link("javascript:alert(1)")


def test_alert_without_severity_reads_as_warning_and_links_built_from_settings() -> None:
    alert = make_alert(labels={"alertname": "VigilMachineSilent", "equipment_id": "press 7/a"}, console_url="")
    message = slack_message(alert, CTX)
    assert "WARNING: VigilMachineSilent on press 7/a" in message["blocks"][0]["text"]["text"]
    actions = next(b for b in message["blocks"] if b["type"] == "actions")
    assert actions["elements"][0]["url"] == "http://console.example:18501/?equipment=press%207/a"


def test_machine_wide_alert_says_so_instead_of_a_star() -> None:
    labels = {"alertname": "VigilMachineDead", "severity": "critical", "equipment_id": "press-3", "sensor": "*"}
    text = texts(slack_message(make_alert(labels=labels), CTX))
    assert "*Sensor*\\nwhole machine" in text


def test_long_annotations_stay_within_slack_limits() -> None:
    alert = make_alert(summary="x" * 5000, description="y" * 5000, **{f"extra_{i}": "z" * 3000 for i in range(12)})
    message = slack_message(alert, CTX)
    for block in message["blocks"]:
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
    assert len(message["text"]) <= 3000


# -- SMS --------------------------------------------------------------------------------------------------


def test_sms_is_cut_at_the_limit_with_an_ellipsis_and_keeps_the_link() -> None:
    alert = make_alert(description="d" * 400)
    text = sms_text(alert, CTX)
    assert gsm_length(text) <= 160
    link = "http://console.example:18501/?equipment=pump-0042"
    assert text.endswith(" " + link)
    assert text[: -len(link) - 1].endswith(ELLIPSIS)
    assert text.startswith("CRITICAL: VigilAnomaly on pump-0042 (site-1) - bearing_temp above its limit")


def test_sms_that_fits_is_not_cut() -> None:
    alert = make_alert(summary="hot", description="")
    text = sms_text(alert, MessageContext(console_url="http://console.example:18501", sms_max_chars=306))
    assert ELLIPSIS not in text
    assert (
        text == "CRITICAL: VigilAnomaly on pump-0042 (site-1) - hot http://console.example:18501/?equipment=pump-0042"
    )


def test_resolved_sms_says_how_long_it_lasted() -> None:
    text = sms_text(make_alert("resolved"), CTX)
    assert text.startswith("RESOLVED: VigilAnomaly on pump-0042 (site-1) after 12 min 5 s")


@pytest.mark.parametrize("limit", [70, 71, 72, 100, 160])
def test_fit_gsm_cuts_exactly_at_the_limit(limit: int) -> None:
    assert fit_gsm("a" * limit, limit) == "a" * limit
    cut = fit_gsm("a" * (limit + 1), limit)
    assert cut == "a" * (limit - 3) + ELLIPSIS
    assert gsm_length(cut) == limit


def test_gsm_extension_characters_count_twice_when_cutting() -> None:
    assert gsm_length("{}") == 4
    cut = fit_gsm("[" * 10, 10)  # 20 septets -> 3 brackets (6) + "..." (3) = 9 <= 10
    assert cut == "[[[..." and gsm_length(cut) <= 10


def test_sms_text_is_gsm_7_friendly() -> None:
    text = to_gsm("Temp 96°C — “bearing” is hot… 🔥 naïve ’quote’ café")
    assert all(c in GSM_BASIC or c in GSM_EXTENSION for c in text), text
    assert text == "Temp 96 degC - \"bearing\" is hot... naive 'quote' café"
    sms = sms_text(make_alert(summary="96°C — hot 🔥"), CTX)
    assert all(c in GSM_BASIC or c in GSM_EXTENSION for c in sms), sms


# -- e-mail -----------------------------------------------------------------------------------------------


def test_email_subject_body_and_resolved_reply_in_the_same_thread() -> None:
    firing = email_message(make_alert(), CTX, "vigil@plant.example", "ops@plant.example", "story123")
    resolved = email_message(make_alert("resolved"), CTX, "vigil@plant.example", "ops@plant.example", "story123")
    assert firing["Subject"] == "[Vigil] CRITICAL: VigilAnomaly on pump-0042 (site-1)"
    assert resolved["Subject"] == "[Vigil] RESOLVED: VigilAnomaly on pump-0042 (site-1), lasted 12 min 5 s"
    assert firing["To"] == "ops@plant.example"
    body = firing.get_content()
    assert "What: bearing_temp above its limit" in body
    assert "Machine:  pump-0042 (pump)" in body
    assert "Console: http://console.example:18501/?equipment=pump-0042" in body
    assert resolved["In-Reply-To"] == firing["Message-ID"] == "<vigil-story123@plant.example>"
    assert "Lasted:   12 min 5 s" in resolved.get_content()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (60, "1 min"),
        (725, "12 min 5 s"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (90000, "1 d 1 h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- webhook payload --------------------------------------------------------------------------------------


def test_webhook_validation_errors_name_the_field() -> None:
    with pytest.raises(InvalidWebhook, match="not valid JSON"):
        parse_webhook(b"{not json")
    with pytest.raises(InvalidWebhook, match=r"alerts: Field required"):
        parse_webhook(b'{"status": "firing"}')
    bad = {"alerts": [{"status": "burning", "labels": {"alertname": "x"}, "startsAt": "2026-03-02T08:15:00Z"}]}
    with pytest.raises(InvalidWebhook, match=r"alerts\.0\.status: Input should be 'firing' or 'resolved'"):
        parse_webhook(orjson.dumps(bad))


def test_webhook_without_fingerprint_gets_one_from_its_labels() -> None:
    alert = {
        "status": "firing",
        "labels": {"alertname": "x", "site": "s"},
        "startsAt": "2026-03-02T08:15:00.123456789Z",
    }
    one = parse_webhook(orjson.dumps({"alerts": [alert]})).alerts[0]
    two = parse_webhook(orjson.dumps({"alerts": [{**alert, "labels": {"site": "s", "alertname": "x"}}]})).alerts[0]
    assert one.fingerprint and one.fingerprint == two.fingerprint
    assert one.startsAt == datetime(2026, 3, 2, 8, 15, 0, 123456, tzinfo=UTC)
    assert one.ended_at is None


# -- on-call ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["+15550000001", "+442071838750", "+4915123456789", "+12"])
def test_e164_accepts(number: str) -> None:
    assert is_e164(number)


@pytest.mark.parametrize("number", ["15550000001", "+05550000001", "+1 555 000 0001", "+1555000000123456", "+", ""])
def test_e164_rejects(number: str) -> None:
    assert not is_e164(number)


ONCALL = {
    "receivers": {
        "slack": {"min_severity": "warning", "recipients": [{"name": "#alerts"}]},
        "sms": {
            "min_severity": "critical",
            "recipients": [
                {"name": "north", "phone": "+15550000001", "sites": ["site-1", "site-2"]},
                {"name": "south", "phone": "+15550000002", "sites": "site-3"},
                {"name": "manager", "phone": "+15550000003"},
            ],
        },
        "email": {
            "min_severity": "info",
            "recipients": [
                {"name": "planning", "email": "plan@example.com"},
                {"name": "lead-1", "email": "lead1@example.com", "sites": ["site-1"], "min_severity": "critical"},
            ],
        },
    }
}


def names(recipients: list) -> list[str]:
    return [r.name for r in recipients]


def test_routing_by_site_and_severity() -> None:
    oncall = parse_oncall(ONCALL)
    critical_1 = {"severity": "critical", "site": "site-1"}
    assert names(oncall.route("sms", critical_1)) == ["north", "manager"]
    assert names(oncall.route("sms", {"severity": "critical", "site": "site-3"})) == ["south", "manager"]
    assert names(oncall.route("sms", {"severity": "warning", "site": "site-1"})) == []  # below the receiver floor
    # Pipeline-wide alerts (no site) reach every recipient whose severity matches.
    assert names(oncall.route("sms", {"severity": "critical"})) == ["north", "south", "manager"]
    # A recipient stricter than its receiver.
    assert names(oncall.route("email", {"severity": "warning", "site": "site-1"})) == ["planning"]
    assert names(oncall.route("email", critical_1)) == ["planning", "lead-1"]
    assert names(oncall.route("email", {"severity": "critical", "site": "site-2"})) == ["planning"]
    # No severity label counts as a warning.
    assert names(oncall.route("slack", {"alertname": "x"})) == ["#alerts"]
    assert oncall.route("sms", critical_1)[0].address == "+15550000001"


def test_example_receivers_yaml_is_valid() -> None:
    oncall = load_oncall(PROJECT_ROOT / "flink-conf" / "alerting" / "receivers.yaml")
    assert oncall.receiver("sms").recipients
    assert all(is_e164(r.phone) for r in oncall.receiver("sms").recipients)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "receivers.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "receivers:\n  sms:\n    recipients:\n      - name: a\n        phone: '555-0001'\n",
            r"receivers\.sms\.recipients\[0\]\.phone: '555-0001' is not an E\.164 phone number",
        ),
        ("receivers:\n  sms:\n    recipients:\n      - name: a\n        phone: 15550000001\n", r"quote it in YAML"),
        ("receivers:\n  sms:\n    recipents: []\n", r"receivers\.sms\.recipents: unknown key"),
        ("receivers:\n  pager:\n    recipients: []\n", r"receivers\.pager: unknown key"),
        ("receivers:\n  email:\n    min_severity: urgent\n", r"receivers\.email\.min_severity: Input should be"),
        (
            "receivers:\n  email:\n    recipients:\n      - name: a\n        email: not-an-address\n",
            r"'not-an-address' is not an e-mail address",
        ),
        ("receivers:\n  slack:\n    recipients:\n      - name: a\n      - name: a\n", r"used twice"),
        (
            "receivers:\n  sms:\n    min_severity: critical\n    recipients:\n      - name: a\n"
            "        phone: '+15550000001'\n        min_severity: warning\n",
            r"below the receiver's critical",
        ),
        ("receivers:\n  slack:\n    recipients:\n      - name: a\n        sites: []\n", r"sites: .*is empty"),
        ("receivers:\n  slack: [\n", r"is not valid YAML"),
        ("slack: {}\n", r"expected a mapping with one key, `receivers`"),
    ],
)
def test_receivers_yaml_errors_are_clear(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(OnCallConfigError, match=expected) as info:
        load_oncall(path)
    assert str(path) in str(info.value)


def test_missing_receivers_yaml_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(OnCallConfigError, match="not found: create it .* VIGIL_ALERTING__RECEIVERS_PATH"):
        load_oncall(tmp_path / "nope.yaml")
