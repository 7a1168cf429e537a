"""The notification relay end to end: a real relay process, the real Slack/SMS stand-in, a real SMTP server
(aiosmtpd) and the real chDB-backed ClickHouse. Small backoff settings keep the module fast; timing assertions
are causal (the relay cannot send before it waited), never speed thresholds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from clickhouse_connect.driver.exceptions import DatabaseError

from alerting.messages import gsm_length
from alerting.payload import Alert
from alerting.retry import DeliveryError
from alerting.senders import SlackApiSender
from alerting.store import DEAD, DELIVERED, PENDING, Delivery, Store
from alerting.webhook_auth import ensure_token
from connectors.clickhouse import make_client
from connectors.kafka import ensure_topics, make_producer
from tests.conftest import clickhouse_server, free_port
from vigil.settings import AlertingSettings, ClickHouseSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration

SMS_SID, SMS_TOKEN, SMS_FROM = "AC0123456789", "secret-token", "+15559990000"
MAIN_SLACK = "/slack/T0/B0/main"
KILL_SLACK = "/slack/T0/B0/kill"
RECEIVERS_YAML = """
receivers:
  slack:
    min_severity: warning
    recipients:
      - name: "#vigil-alerts"
  sms:
    min_severity: critical
    recipients:
      - name: north
        phone: "+15550000001"
        sites: [site-1]
      - name: manager
        phone: "+15550000002"
      - name: south
        phone: "+15550000003"
        sites: [site-2]
  email:
    min_severity: warning
    recipients:
      - name: planning
        email: planning@plant.example
"""


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up (exit {proc.poll()}); log {log}:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- servers ------------------------------------------------------------------------------------------------


class StandIn:
    """Client of the Slack / Twilio stand-in process."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def requests(self, prefix: str, needle: str = "") -> list[dict[str, Any]]:
        records = httpx.get(f"{self.url}/requests", params={"path_prefix": prefix}, timeout=5).json()
        return [r for r in records if needle in r["body"]]

    def fail_next(self, prefix: str, count: int = 1, **mode: Any) -> None:
        httpx.post(f"{self.url}/control", json={"path_prefix": prefix, "count": count, **mode}, timeout=5)

    def reset(self, prefix: str = "/") -> None:
        httpx.post(f"{self.url}/control", json={"path_prefix": prefix, "reset": True}, timeout=5)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    folder = tmp_path_factory.mktemp("standin")
    port, log = free_port(), folder / "standin.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "operations.stack.saas_standin",
                "--port",
                str(port),
                "--record",
                str(folder / "requests.jsonl"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, log)
        yield StandIn(port)
    finally:
        stop_process(proc)


class Mailbox:
    """aiosmtpd handler keeping every message it accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 -- aiosmtpd hook
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def find(self, fingerprint: str) -> list[tuple[list[str], email.message.EmailMessage]]:
        return [(to, m) for to, m in self.messages if m["X-Vigil-Fingerprint"] == fingerprint]


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def ch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSettings]:
    # Not the default table name: the schema, the relay and the server's grants all follow the setting.
    with clickhouse_server(tmp_path_factory, "notify_test", deliveries_table="alert_deliveries_test") as server:
        yield server


def relay_settings(
    folder: Path,
    standin: StandIn,
    smtp_port: int,
    ch: ClickHouseSettings,
    kafka: KafkaSettings | None = None,
    **alerting: Any,
) -> Settings:
    receivers = folder / "receivers.yaml"
    receivers.write_text(RECEIVERS_YAML)
    values: dict[str, Any] = {
        "relay_port": free_port(),
        "state_path": folder / "relay.db",
        "receivers_path": receivers,
        "slack_webhook_url": standin.url + MAIN_SLACK,
        "sms_api_base_url": standin.url,
        "sms_account_sid": SMS_SID,
        "sms_auth_token": SMS_TOKEN,
        "sms_from": SMS_FROM,
        "sms_max_chars": 160,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "email_from": "vigil@plant.example",
        "max_attempts": 3,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 2.0,
        "request_timeout_s": 1.0,
        "rate_limit_per_minute": {"slack": 6000.0, "sms": 6000.0, "email": 6000.0},
        "console_url": "http://console.example:18501",
        "insight_followups": False,  # no broker here; test_diagnoses_reach_the_people_paged_* turns it on
        **alerting,
    }
    return Settings(data_dir=folder, clickhouse=ch, alerting=AlertingSettings(**values), kafka=kafka or KafkaSettings())


class RelayProcess:
    """``python -m alerting.relay`` with the given settings (stoppable, killable, restartable)."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.url = f"http://127.0.0.1:{settings.alerting.relay_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RelayProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "alerting.relay"],
                env={**os.environ, **self.settings.to_env()},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.url}/healthz", self.proc, self.log)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown hook runs, like a crash or an OOM kill
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def post(self, receiver: str, payload: dict[str, Any] | bytes, token: str | None = None) -> httpx.Response:
        """POST as Alertmanager does: with the relay's bearer token (``token`` overrides it; "" sends none)."""
        token = ensure_token(self.settings.relay_token_path) if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.url}/alertmanager/{receiver}"
        if isinstance(payload, bytes):
            return httpx.post(url, content=payload, headers=headers, timeout=10)
        return httpx.post(url, json=payload, headers=headers, timeout=10)

    def idle(self) -> bool:
        health = httpx.get(f"{self.url}/healthz", timeout=5).json()
        return not any(health["queue"].values()) and not any(health["in_flight"].values())

    def store(self) -> Store:
        return Store(self.settings.alerting_state_path)

    def deliveries(self, fingerprint: str, receiver: str | None = None) -> list[Delivery]:
        store = self.store()
        try:
            return store.find(fingerprint, receiver)
        finally:
            store.close()

    def wait_final(self, fingerprint: str, count: int = 1, receiver: str | None = None) -> list[Delivery]:
        """The deliveries of an alert once ``count`` of them are delivered or dead."""
        return wait_for(
            lambda: (
                (rows := self.deliveries(fingerprint, receiver))
                and sum(r.state in (DELIVERED, DEAD) for r in rows) >= count
                and rows
            ),
            what=f"{count} finished deliveries of {fingerprint}",
        )


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, standin: StandIn, smtp: tuple[Mailbox, int], ch_server: ClickHouseSettings
) -> Iterator[RelayProcess]:
    folder = tmp_path_factory.mktemp("relay")
    process = RelayProcess(relay_settings(folder, standin, smtp[1], ch_server), folder / "relay.log").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def settled(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[None]:
    """Every test starts with no queued failures and leaves nothing in flight for the next one."""
    standin.reset()
    yield
    standin.reset()
    if "relay" in request.fixturenames:
        wait_for(request.getfixturevalue("relay").idle, what="the relay's queue to drain")


# -- payloads -----------------------------------------------------------------------------------------------

STARTED = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)


def am_alert(
    fingerprint: str, status: str = "firing", site: str = "site-1", severity: str = "critical", lasted_s: float = 725.0
) -> dict[str, Any]:
    machine = f"pump-{fingerprint[:6]}"
    ends = STARTED + timedelta(seconds=lasted_s) if status == "resolved" else datetime(1, 1, 1, tzinfo=UTC)
    return {
        "status": status,
        "labels": {
            "alertname": "VigilAnomaly",
            "severity": severity,
            "site": site,
            "equipment_id": machine,
            "equipment_type": "pump",
            "sensor": "bearing_temp",
            "detector": "isolation_forest",
        },
        "annotations": {
            "summary": f"{machine} bearing_temp far from normal (score 3.2)",
            "description": "Isolation forest score above its threshold for 2 windows",
            "console_url": f"http://console.example:18501/?equipment={machine}",
        },
        "startsAt": STARTED.isoformat().replace("+00:00", "Z"),
        "endsAt": ends.isoformat().replace("+00:00", "Z"),
        "generatorURL": "http://127.0.0.1:19090/graph?g0.expr=vigil_anomaly_severity",
        "fingerprint": fingerprint,
    }


def webhook(receiver: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="VigilAnomaly", site="site-1"}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver,
        "groupLabels": {"alertname": "VigilAnomaly", "site": "site-1"},
        "commonLabels": {"alertname": "VigilAnomaly"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:19093",
        "alerts": list(alerts),
    }


def new_fingerprint() -> str:
    return uuid.uuid4().hex[:16]


def statuses(records: list[dict[str, Any]]) -> list[int]:
    return [r["response"]["status"] for r in records]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`vigil alerts ...` as the lead mounts it (alerts_app), in its own process with these settings."""
    code = "import sys; from operations.alerts_cli import alerts_app; sys.argv[0] = 'vigil alerts'; alerts_app()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **settings.to_env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- tests --------------------------------------------------------------------------------------------------


def test_firing_then_resolved_reach_slack_and_sms_with_the_right_content(relay: RelayProcess, standin: StandIn) -> None:
    fp = new_fingerprint()
    machine = f"pump-{fp[:6]}"
    for receiver in ("slack", "sms"):
        response = relay.post(receiver, webhook(receiver, am_alert(fp)))
        assert response.status_code == 200, response.text
    # site-1 critical: north (site-1) and manager (every site) are paged, south (site-2) is not.
    assert relay.post("sms", webhook("sms", am_alert(fp))).json()["duplicates"] == 2

    slack = wait_for(lambda: standin.requests(MAIN_SLACK, fp), what="the Slack message")
    sms = wait_for(lambda: len(r := standin.requests("/2010-04-01/", machine)) == 2 and r, what="two SMS")
    (message,) = slack
    assert message["response"]["status"] == 200
    blocks = message["json"]["blocks"]
    assert blocks[0]["text"]["text"].endswith(f"CRITICAL: VigilAnomaly on {machine}")
    assert f"{machine} bearing_temp far from normal" in blocks[1]["text"]["text"]
    assert blocks[3]["elements"][0]["url"] == f"http://console.example:18501/?equipment={machine}"

    assert sorted(r["form"]["To"] for r in sms) == ["+15550000001", "+15550000002"]
    for record in sms:
        assert record["path"] == f"/2010-04-01/Accounts/{SMS_SID}/Messages.json"
        assert (
            record["headers"]["authorization"]
            == "Basic " + base64.b64encode(f"{SMS_SID}:{SMS_TOKEN}".encode()).decode()
        )
        assert record["form"]["From"] == SMS_FROM
        assert record["form"]["Body"].startswith(f"CRITICAL: VigilAnomaly on {machine} (site-1)")
        assert gsm_length(record["form"]["Body"]) <= 160
        assert record["response"]["status"] == 201  # the stand-in checked auth and To/From/Body like Twilio

    # The end of the story: same title, RESOLVED, how long it lasted -- to the same people.
    for receiver in ("slack", "sms"):
        relay.post(receiver, webhook(receiver, am_alert(fp, "resolved")))
    resolved = wait_for(lambda: len(r := standin.requests(MAIN_SLACK, fp)) == 2 and r[1], what="resolved Slack")
    assert resolved["json"]["blocks"][0]["text"]["text"].endswith(f"RESOLVED: VigilAnomaly on {machine}")
    assert "after *12 min 5 s*" in resolved["json"]["blocks"][1]["text"]["text"]
    sms_resolved = wait_for(
        lambda: len(r := standin.requests("/2010-04-01/", machine)) == 4 and r[2:], what="resolved SMS"
    )
    assert sorted(r["form"]["To"] for r in sms_resolved) == ["+15550000001", "+15550000002"]
    assert all(
        r["form"]["Body"].startswith(f"RESOLVED: VigilAnomaly on {machine} (site-1) after 12 min 5 s")
        for r in sms_resolved
    )


def test_alertmanager_resends_never_page_twice(relay: RelayProcess, standin: StandIn) -> None:
    first, second = new_fingerprint(), new_fingerprint()
    payload = webhook("slack", am_alert(first))
    assert relay.post("slack", payload).json()["queued"] == 1
    again = relay.post("slack", payload).json()  # an Alertmanager retry / repeat_interval re-send
    assert (again["queued"], again["duplicates"]) == (0, 1)
    update = relay.post("slack", webhook("slack", am_alert(first), am_alert(second))).json()  # group_interval update
    assert (update["queued"], update["duplicates"]) == (1, 1)

    relay.wait_final(second)
    wait_for(relay.idle, what="nothing left to send")  # after this no request can still come
    assert len(standin.requests(MAIN_SLACK, first)) == 1
    assert len(standin.requests(MAIN_SLACK, second)) == 1
    metrics = httpx.get(f"{relay.url}/metrics", timeout=5).text
    deduplicated = next(
        line for line in metrics.splitlines() if line.startswith('vigil_notify_deduplicated_total{receiver="slack"}')
    )
    assert float(deduplicated.rsplit(" ", 1)[1]) >= 2


def test_alerts_of_one_notification_page_each_recipient_once(relay: RelayProcess, standin: StandIn) -> None:
    """Two conditions of one machine in one Alertmanager notification: one Slack message, one SMS per person,
    each naming both; a later re-send of the same group pages nobody again."""
    threshold, jump = new_fingerprint(), new_fingerprint()
    machine = f"pump-{threshold[:6]}"
    pair = [
        am_alert(threshold),
        {
            **am_alert(jump),
            "labels": {**am_alert(jump)["labels"], "equipment_id": machine, "detector": "rate_of_change"},
        },
    ]
    for receiver in ("slack", "sms"):
        assert relay.post(receiver, webhook(receiver, *pair)).status_code == 200
    relay.wait_final(threshold, count=1, receiver="slack")
    relay.wait_final(jump, count=2, receiver="sms")
    wait_for(relay.idle, what="nothing left to send")
    (slack,) = standin.requests(MAIN_SLACK, machine)
    assert slack["json"]["text"].startswith(f"CRITICAL: 2 alerts on {machine}")
    assert threshold in slack["body"] and jump in slack["body"]  # both fingerprints in the context line
    sms = standin.requests("/2010-04-01/", machine)
    assert sorted(r["form"]["To"] for r in sms) == ["+15550000001", "+15550000002"]
    assert all("isolation_forest" in r["form"]["Body"] and "rate_of_change" in r["form"]["Body"] for r in sms)
    # every alert of the batch is delivered on its own row (idempotency, stories and the log stay per alert)
    assert {r.state for fp in (threshold, jump) for r in relay.deliveries(fp)} == {DELIVERED}

    for receiver in ("slack", "sms"):
        assert relay.post(receiver, webhook(receiver, *pair)).json()["duplicates"] == (2 if receiver == "slack" else 4)
    wait_for(relay.idle, what="nothing left to send")
    assert len(standin.requests(MAIN_SLACK, machine)) == 1
    assert len(standin.requests("/2010-04-01/", machine)) == 2


def test_server_errors_are_retried_until_delivered(
    relay: RelayProcess, standin: StandIn, ch_server: ClickHouseSettings
) -> None:
    fp = new_fingerprint()
    standin.fail_next(MAIN_SLACK, count=2, status=500)
    relay.post("slack", webhook("slack", am_alert(fp)))
    (row,) = relay.wait_final(fp)
    assert (row.state, row.attempts) == (DELIVERED, 3)
    assert statuses(standin.requests(MAIN_SLACK, fp)) == [500, 500, 200]

    # Every attempt's outcome is in the ClickHouse delivery log (shipped in batches by the relay).
    client = make_client(ch_server, "admin")
    try:
        query = (
            "SELECT attempt, status, http_status, receiver, recipient, equipment_id, site, severity, alertname "
            "FROM alert_deliveries_test WHERE fingerprint = {fp:String} ORDER BY attempt"
        )

        def logged() -> list[tuple]:
            try:
                return client.query(query, parameters={"fp": fp}).result_rows
            except DatabaseError:  # the relay has not created the database yet
                return []

        rows = wait_for(lambda: len(r := logged()) == 3 and r, what="three delivery-log rows in ClickHouse")
    finally:
        client.close()
    machine = f"pump-{fp[:6]}"
    assert [r[:3] for r in rows] == [(1, "retry", 500), (2, "retry", 500), (3, "delivered", 200)]
    assert set(r[3:] for r in rows) == {("slack", "#vigil-alerts", machine, "site-1", "critical", "VigilAnomaly")}

    # `vigil alerts deliveries` shows the same story from either log.
    for source in ("sqlite", "clickhouse"):
        shown = run_cli(relay.settings, "deliveries", "--source", source, "--receiver", "slack", "--limit", "200")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        lines = [line for line in shown.stdout.splitlines() if machine in line]
        assert [("retry" in line, "delivered" in line) for line in lines] == [
            (False, True),
            (True, False),
            (True, False),
        ], shown.stdout


def test_retry_after_is_waited_for(relay: RelayProcess, standin: StandIn) -> None:
    fp = new_fingerprint()
    standin.fail_next(MAIN_SLACK, status=429, retry_after="1")
    relay.post("slack", webhook("slack", am_alert(fp)))
    (row,) = relay.wait_final(fp)
    assert row.state == DELIVERED
    first, second = standin.requests(MAIN_SLACK, fp)
    assert (first["response"]["status"], second["response"]["status"]) == (429, 200)
    # Causal: the relay sent the retry only after the second the provider asked for (clock of the stand-in).
    assert second["received_at"] - first["received_at"] >= 1.0


def test_client_error_is_dead_lettered_at_once_and_resend_now_delivers_it(
    relay: RelayProcess, standin: StandIn
) -> None:
    fp = new_fingerprint()
    standin.fail_next(MAIN_SLACK, status=400, body="invalid_payload")
    relay.post("slack", webhook("slack", am_alert(fp)))
    (row,) = relay.wait_final(fp)
    assert (row.state, row.attempts, row.last_status) == (DEAD, 1, 400)
    assert row.reason and row.reason.startswith("rejected, not retried: Slack answered HTTP 400: invalid_payload")
    assert len(standin.requests(MAIN_SLACK, fp)) == 1

    listing = run_cli(relay.settings, "dead-letters")
    assert listing.returncode == 0, listing.stderr
    assert str(row.id) in listing.stdout and "invalid_payload" in listing.stdout

    resent = run_cli(relay.settings, "resend", str(row.id), "--now")  # delivered by the CLI process itself
    assert resent.returncode == 0, resent.stdout + resent.stderr
    assert "delivered" in resent.stdout
    assert statuses(standin.requests(MAIN_SLACK, fp)) == [400, 200]
    assert relay.deliveries(fp)[0].state == DELIVERED


def test_exhausted_attempts_dead_letter_then_resend_delivers(relay: RelayProcess, standin: StandIn) -> None:
    fp = new_fingerprint()
    standin.fail_next(MAIN_SLACK, count=3, status=503)
    relay.post("slack", webhook("slack", am_alert(fp)))
    (row,) = relay.wait_final(fp)
    assert (row.state, row.attempts) == (DEAD, 3)
    assert row.reason and row.reason.startswith("gave up after 3 attempts: Slack answered HTTP 503")
    assert statuses(standin.requests(MAIN_SLACK, fp)) == [503, 503, 503]

    resent = run_cli(relay.settings, "resend", str(row.id))  # back to the outbox: the running relay delivers
    assert resent.returncode == 0, resent.stdout + resent.stderr
    wait_for(lambda: relay.deliveries(fp)[0].state == DELIVERED, what="the resent message delivered")
    assert statuses(standin.requests(MAIN_SLACK, fp)) == [503, 503, 503, 200]


def test_email_reaches_the_smtp_server_and_the_resolved_one_replies(
    relay: RelayProcess, smtp: tuple[Mailbox, int]
) -> None:
    mailbox = smtp[0]
    fp = new_fingerprint()
    machine = f"pump-{fp[:6]}"
    relay.post("email", webhook("email", am_alert(fp, severity="warning")))
    ((to, firing),) = wait_for(lambda: mailbox.find(fp), what="the e-mail")
    assert to == ["planning@plant.example"]
    assert firing["Subject"] == f"[Vigil] WARNING: VigilAnomaly on {machine} (site-1)"
    assert firing["From"] == "vigil@plant.example"
    body = firing.get_content()
    assert f"What: {machine} bearing_temp far from normal" in body
    assert f"Console: http://console.example:18501/?equipment={machine}" in body

    relay.post("email", webhook("email", am_alert(fp, "resolved", severity="warning")))
    _, resolved = wait_for(lambda: len(m := mailbox.find(fp)) == 2 and m[1], what="the resolved e-mail")
    assert resolved["Subject"] == f"[Vigil] RESOLVED: VigilAnomaly on {machine} (site-1), lasted 12 min 5 s"
    assert resolved["In-Reply-To"] == firing["Message-ID"]


def test_invalid_webhooks_are_refused_with_a_reason(relay: RelayProcess) -> None:
    response = relay.post("slack", b"{not json")
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"]
    response = relay.post("slack", {"alerts": [{"status": "burning", "labels": {"alertname": "x"}}]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert "alerts.0.status: Input should be 'firing' or 'resolved'" in error
    assert "alerts.0.startsAt: Field required" in error
    response = relay.post("pager", webhook("pager", am_alert(new_fingerprint())))
    assert response.status_code == 404
    assert "/alertmanager/slack" in response.json()["error"]


def test_only_alertmanager_with_the_token_may_page(relay: RelayProcess, standin: StandIn) -> None:
    """A forged alert without the relay's token, or with a wrong one, pages nobody; a huge body is refused unread."""
    fp = new_fingerprint()
    real = ensure_token(relay.settings.relay_token_path)
    for token in ("", "not-the-token", real[:-1], real + "x"):
        response = relay.post("slack", webhook("slack", am_alert(fp)), token=token)
        assert response.status_code == 401, token
        assert response.headers["www-authenticate"] == "Bearer"
        assert "webhook_token_file" in response.json()["error"]
    basic = httpx.post(
        f"{relay.url}/alertmanager/slack",
        json=webhook("slack", am_alert(fp)),
        headers={"Authorization": f"Basic {real}"},
        timeout=10,
    )
    assert basic.status_code == 401
    assert not relay.deliveries(fp)  # nothing was queued for anyone
    limit = relay.settings.alerting.webhook_max_bytes
    huge = relay.post("slack", b"{" + b" " * limit + b"}")
    assert huge.status_code == 413 and str(limit) in huge.json()["error"]
    assert relay.post("slack", webhook("slack", am_alert(fp))).status_code == 200  # the real one still works
    assert os.stat(relay.settings.relay_token_path).st_mode & 0o077 == 0  # readable by its owner only


def test_killed_relay_delivers_its_pending_outbox_after_restart(
    tmp_path: Path, standin: StandIn, smtp: tuple[Mailbox, int], ch_server: ClickHouseSettings
) -> None:
    # Its own relay (state file, Slack path) with a generous budget: nothing may finish before the kill.
    settings = relay_settings(
        tmp_path,
        standin,
        smtp[1],
        ch_server,
        slack_webhook_url=standin.url + KILL_SLACK,
        max_attempts=100,
        request_timeout_s=0.5,
        backoff_max_s=0.2,
    )
    crashing = RelayProcess(settings, tmp_path / "relay.log").start()
    fp = new_fingerprint()
    try:
        standin.fail_next(KILL_SLACK, count=10_000, delay_s=30)  # Slack hangs: every attempt times out
        assert crashing.post("slack", webhook("slack", am_alert(fp))).json()["queued"] == 1
        wait_for(lambda: standin.requests(KILL_SLACK, fp), what="a delivery attempt in progress")
        crashing.kill()
    finally:
        crashing.stop()
    (row,) = crashing.deliveries(fp)
    assert row.state == PENDING  # acknowledged to Alertmanager, not delivered, not lost
    hung = standin.requests(KILL_SLACK, fp)
    assert hung and all(r["response"]["delay_s"] == 30 for r in hung)  # every attempt so far hung, none got through

    standin.reset(KILL_SLACK)  # Slack is healthy again
    restarted = RelayProcess(settings, tmp_path / "relay.log").start()
    try:
        (row,) = restarted.wait_final(fp)
        assert row.state == DELIVERED
        last = standin.requests(KILL_SLACK, fp)[-1]
        assert (last["response"]["status"], last["response"]["delay_s"]) == (200, 0)
    finally:
        restarted.stop()


def test_slow_sms_provider_and_clickhouse_outage_do_not_hold_slack_back(
    tmp_path: Path, standin: StandIn, smtp: tuple[Mailbox, int]
) -> None:
    nowhere = ClickHouseSettings(port=free_port(), database="nowhere")  # nothing listens there
    settings = relay_settings(
        tmp_path,
        standin,
        smtp[1],
        nowhere,
        slack_webhook_url=standin.url + "/slack/T0/B0/slow",
        request_timeout_s=3.0,
        max_attempts=2,
    )
    relay = RelayProcess(settings, tmp_path / "relay.log").start()
    try:
        sms_fp, slack_fp = new_fingerprint(), new_fingerprint()
        standin.fail_next("/2010-04-01/", count=100, delay_s=30)  # the SMS provider hangs
        relay.post("sms", webhook("sms", am_alert(sms_fp)))
        hanging = wait_for(lambda: standin.requests("/2010-04-01/", f"pump-{sms_fp[:6]}"), what="an SMS attempt")
        relay.post("slack", webhook("slack", am_alert(slack_fp)))
        (row,) = relay.wait_final(slack_fp)
        assert row.state == DELIVERED
        (slack,) = standin.requests("/slack/T0/B0/slow", slack_fp)
        # Causal: Slack went out while the SMS attempt was still waiting for an answer, which can only end
        # by timing out request_timeout_s after it started.
        assert slack["received_at"] < min(r["received_at"] for r in hanging) + 3.0
        assert relay.deliveries(sms_fp)[0].state == PENDING

        # ClickHouse is down: delivering went on, the relay says so, and the attempts wait in SQLite.
        wait_for(
            lambda: httpx.get(f"{relay.url}/healthz", timeout=5).json()["delivery_log"] == "down",
            what="the delivery log reported down",
        )
        assert "ClickHouse delivery log unavailable" in (tmp_path / "relay.log").read_text()
        store = relay.store()
        try:
            assert [a.outcome for a in store.unshipped_attempts(100) if a.fingerprint == slack_fp] == ["delivered"]
        finally:
            store.close()
    finally:
        relay.stop()


def test_relay_refuses_to_start_with_a_broken_oncall_file(
    tmp_path: Path, standin: StandIn, smtp: tuple[Mailbox, int], ch_server: ClickHouseSettings
) -> None:
    settings = relay_settings(tmp_path, standin, smtp[1], ch_server)
    settings.alerting.receivers_path.write_text(RECEIVERS_YAML.replace('"+15550000003"', '"555-0003"'))
    result = subprocess.run(
        [sys.executable, "-m", "alerting.relay"],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "receivers.sms.recipients[2].phone: '555-0003' is not an E.164 phone number" in result.stderr


def test_diagnoses_reach_the_people_paged_in_the_message_or_as_one_follow_up(
    tmp_path: Path,
    standin: StandIn,
    smtp: tuple[Mailbox, int],
    ch_server: ClickHouseSettings,
    kafka_settings: KafkaSettings,
) -> None:
    """Page first, diagnosis later -> one follow-up per paged recipient; the final analysis agreeing -> nothing
    more; an alert sent after the diagnosis is known carries it; a changed diagnosis -> one more follow-up."""
    kafka = kafka_settings.model_copy(update={"insights_topic": f"vigil.insights.relay-{uuid.uuid4().hex[:8]}"})
    ensure_topics(kafka, topics=[kafka.insights_topic])
    settings = relay_settings(
        tmp_path,
        standin,
        smtp[1],
        ch_server,
        kafka=kafka,
        insight_followups=True,
        insights_consumer_group=f"relay-dx-{uuid.uuid4().hex[:8]}",
    )
    relay = RelayProcess(settings, tmp_path / "relay.log").start()
    producer = make_producer(kafka)
    fp = new_fingerprint()
    machine = f"pump-{fp[:6]}"
    start_ms = int(STARTED.timestamp() * 1000)

    def publish(agent: str, closed: bool, fault: str, title: str, **extra: Any) -> None:
        record = {
            "equipment_id": machine,
            "site": "site-1",
            "equipment_type": "pump",
            "agent": agent,
            "kind": "diagnosis" if agent == "diagnostic" else agent,
            "episode_id": f"{machine}-ep",
            "window_start_ms": start_ms,
            "window_end_ms": start_ms + 30_000,
            "closed": closed,
            "title": title,
            "severity": "warning",
            "confidence": 0.8,
            "fault_type": fault,
            "sensors": ["bearing_temp"],
            "details": "{}",
            "emitted_at_ms": start_ms + 30_000,
            **extra,
        }
        producer.produce(kafka.insights_topic, key=machine.encode(), value=json.dumps(record).encode())
        producer.flush(10)

    def slack_messages() -> list[dict[str, Any]]:
        return [r for r in standin.requests(MAIN_SLACK, machine) if r["response"]["status"] == 200]

    def sms_messages() -> list[dict[str, Any]]:
        return standin.requests("/2010-04-01/", machine)

    try:
        for receiver in ("slack", "sms"):
            assert relay.post(receiver, webhook(receiver, am_alert(fp))).status_code == 200
        wait_for(lambda: len(slack_messages()) == 1 and len(sms_messages()) == 2, what="the page")

        actions = json.dumps({"actions": ["Check lubrication and re-grease"]})
        publish("diagnostic", False, "bearing_wear", "Preliminary: Bearing wear (bearing_temp), 80% sure")
        publish("maintenance", False, "bearing_wear", "Bearing wear: act within 8 h", details=actions)
        follow = wait_for(lambda: len(m := slack_messages()) == 2 and m[1], what="the Slack follow-up")
        header = follow["json"]["blocks"][0]["text"]["text"]
        assert header.endswith(f"UPDATE: VigilDiagnosis on {machine}")
        assert "Bearing wear (bearing_temp), 80% sure" in json.dumps(follow["json"])
        sms = wait_for(lambda: len(m := sms_messages()) == 4 and m[2:], what="the SMS follow-ups")
        assert sorted(r["form"]["To"] for r in sms) == ["+15550000001", "+15550000002"]  # the people paged
        assert all(r["form"]["Body"].startswith(f"UPDATE: VigilDiagnosis on {machine}") for r in sms)
        assert all("Bearing wear" in r["form"]["Body"] for r in sms)

        # The final analysis agrees: stored, but nobody reads the same thing twice.
        publish("diagnostic", True, "bearing_wear", "Bearing wear (bearing_temp), 85% sure")
        store = relay.store()
        try:
            wait_for(
                lambda: (
                    store.diagnoses_for([Alert.model_validate(am_alert(fp))]).get(fp, None)
                    and store.diagnoses_for([Alert.model_validate(am_alert(fp))])[fp].closed
                ),
                what="the final diagnosis in the relay",
            )
        finally:
            store.close()
        # A new alert of the same episode now carries the diagnosis itself, and prompts no follow-up.
        fp2 = new_fingerprint()
        second = am_alert(fp2)
        second["labels"]["equipment_id"] = machine
        second["labels"]["sensor"] = "vibration_rms"
        assert relay.post("slack", webhook("slack", second)).status_code == 200
        carried = wait_for(lambda: len(m := slack_messages()) == 3 and m[2], what="the second alert")
        assert "*Diagnosis:* Bearing wear (bearing_temp), 85% sure" in json.dumps(carried["json"])
        time.sleep(2.5)  # two follow-up sweeps: nothing new may arrive
        assert len(slack_messages()) == 3 and len(sms_messages()) == 4

        # A final analysis that changes the diagnosis is news: one more follow-up to each person paged.
        publish("diagnostic", True, "overheating", "Overheating (bearing_temp), 70% sure")
        changed = wait_for(lambda: len(m := slack_messages()) == 4 and m[3], what="the changed diagnosis")
        assert "Overheating (bearing_temp), 70% sure" in json.dumps(changed["json"])
        wait_for(lambda: len(sms_messages()) == 6, what="the changed diagnosis by SMS")
    finally:
        relay.stop()


# -- Slack threads (Web API) ----------------------------------------------------------------------------------
SLACK_API = "/api/chat.postMessage"


@pytest.fixture(scope="module")
def threaded_relay(
    tmp_path_factory: pytest.TempPathFactory, standin: StandIn, smtp: tuple[Mailbox, int], ch_server: ClickHouseSettings
) -> Iterator[RelayProcess]:
    """A relay with a bot token: Slack through chat.postMessage, so one machine's incident is one thread."""
    folder = tmp_path_factory.mktemp("threaded-relay")
    settings = relay_settings(
        folder,
        standin,
        smtp[1],
        ch_server,
        slack_webhook_url=None,
        slack_bot_token="xoxb-test-bot",
        slack_api_url=standin.url + "/api",
        slack_thread_reuse_s=600.0,
    )
    process = RelayProcess(settings, folder / "relay.log").start()
    try:
        yield process
    finally:
        process.stop()


def test_one_machine_incident_is_one_slack_thread(threaded_relay: RelayProcess, standin: StandIn) -> None:
    first, escalation, other = new_fingerprint(), new_fingerprint(), new_fingerprint()
    machine = f"pump-{first[:6]}"

    def posts(count: int) -> list[dict[str, Any]]:
        return wait_for(
            lambda: len(r := standin.requests(SLACK_API, machine)) >= count and r, what=f"{count} Slack posts"
        )

    # The first page of the machine: a message in the channel, which opens its thread.
    threaded_relay.post("slack", webhook("slack", am_alert(first, severity="warning")))
    (opened,) = posts(1)
    answer = opened["slack_answer"]
    assert answer["ok"] and opened["json"]["channel"] == "#vigil-alerts" and "thread_ts" not in opened["json"]
    assert opened["headers"]["authorization"] == "Bearer xoxb-test-bot"
    assert opened["json"]["blocks"][0]["text"]["text"].endswith(f"WARNING: VigilAnomaly on {machine}")

    # Worse news about the same machine: a reply in its thread, also shown in the channel (an escalation).
    critical = am_alert(escalation)
    critical["labels"]["equipment_id"] = machine
    threaded_relay.post("slack", webhook("slack", critical))
    reply = posts(2)[1]["json"]
    assert reply["thread_ts"] == answer["ts"] and reply["channel"] == answer["channel"]
    assert reply["reply_broadcast"] is True

    # The end of the warning: a reply in the same thread, not shown in the channel.
    threaded_relay.post("slack", webhook("slack", am_alert(first, "resolved", severity="warning")))
    resolved = posts(3)[2]["json"]
    assert resolved["thread_ts"] == answer["ts"] and resolved["reply_broadcast"] is False
    assert resolved["blocks"][0]["text"]["text"].endswith(f"RESOLVED: VigilAnomaly on {machine}")
    assert all(r["slack_answer"]["ok"] for r in standin.requests(SLACK_API, machine))

    # A thread whose parent is gone (the workspace forgot it): the message stands alone instead of being lost.
    gone = am_alert(new_fingerprint())
    gone["labels"]["equipment_id"] = machine
    store = threaded_relay.store()
    try:
        store.open_slack_thread("#vigil-alerts", [machine], answer["channel"], "999.000001", "critical")
    finally:
        store.close()
    threaded_relay.post("slack", webhook("slack", gone))
    alone = posts(5)[4]
    assert "thread_ts" not in alone["json"] and alone["slack_answer"]["ok"]
    assert [r["slack_answer"].get("error") for r in posts(5)][3] == "thread_not_found"

    # Another machine is another incident: its own message in the channel.
    threaded_relay.post("slack", webhook("slack", am_alert(other)))
    (own,) = wait_for(lambda: standin.requests(SLACK_API, f"pump-{other[:6]}"), what="the other machine's post")
    assert "thread_ts" not in own["json"] and own["slack_answer"]["ts"] != answer["ts"]
    wait_for(threaded_relay.idle, what="the threaded relay's queue to drain")
    store = threaded_relay.store()
    try:
        threads = store.slack_threads("#vigil-alerts", [machine, f"pump-{other[:6]}"])
    finally:
        store.close()
    assert threads[machine].ts == alone["slack_answer"]["ts"]  # the standalone message opened a new thread
    assert threads[f"pump-{other[:6]}"].ts == own["slack_answer"]["ts"]


def test_slack_api_refusals_say_why_and_only_transient_ones_retry(standin: StandIn) -> None:
    async def send(token: str, **kwargs: Any) -> Any:
        settings = AlertingSettings(slack_bot_token=token, slack_api_url=standin.url + "/api")
        async with httpx.AsyncClient(timeout=5) as client:
            return await SlackApiSender(client, settings).send("#vigil-alerts", {"text": "hello"}, **kwargs)

    posted = asyncio.run(send("xoxb-good"))
    assert posted.status == 200 and posted.channel.startswith("C") and posted.ts
    for token, kwargs, error in (
        ("not-a-bot-token", {}, "invalid_auth"),
        ("xoxb-good", {"thread_ts": "1.000000"}, "thread_not_found"),
    ):
        with pytest.raises(DeliveryError, match=error) as caught:
            asyncio.run(send(token, **kwargs))
        assert not caught.value.retryable
