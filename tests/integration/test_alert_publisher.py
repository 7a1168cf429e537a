"""Verdicts on Kafka -> jobs.alert_publisher -> a real Alertmanager (rendered Vigil config) -> webhooks.

Real servers: the session's Apache Kafka broker, an Alertmanager and a Pushgateway from the Debian packages, and a local
HTTP server standing in for the notification relay (it records every webhook Alertmanager sends). Also covers
jobs.kafka_lag (the publisher's committed offsets, read the way the exporter reads them).
"""

from __future__ import annotations

import io
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import uvicorn
from fastapi import FastAPI, Request
from rich.console import Console

from alerting.policy import ALERT_ANOMALY, SOURCE
from connectors.alertmanager import AlertmanagerClient, AlertmanagerUnavailable
from connectors.kafka import ensure_topics, make_producer
from connectors.monitoring import monitoring_session
from jobs.alert_publisher import AlertPublisher
from jobs.kafka_lag import KafkaLagExporter
from operations.demo import PLANNED_BY, end_planned_stop, silence_planned_stop
from operations.stack.prometheus_configs import alertmanager_argv, config_dir, pushgateway_argv, render_configs
from tests.conftest import RunLoop, free_port
from vigil.settings import KafkaSettings, Settings

pytestmark = pytest.mark.integration
W = 5000


def poll(what: str, check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Call ``check`` until it returns something truthy; fail with its last value at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, AlertmanagerUnavailable) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


# -- servers ------------------------------------------------------------------------------------------------------
class Recorder:
    """Stand-in for the notification relay: records every Alertmanager webhook as (receiver, payload)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        app = FastAPI()

        @app.post("/alertmanager/{receiver}")
        async def webhook(receiver: str, request: Request) -> dict[str, str]:
            payload = await request.json()
            with self._lock:
                self.calls.append((receiver, payload))
            return {"status": "ok"}

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        poll("relay stand-in up", lambda: self.server.started, 10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def alerts(self, receiver: str, status: str = "firing") -> list[dict[str, Any]]:
        """Alerts of ``status`` in the webhooks ``receiver`` got so far."""
        with self._lock:
            calls = list(self.calls)
        return [a for r, payload in calls if r == receiver for a in payload["alerts"] if a["status"] == status]


class Server:
    """One Debian-packaged server process, restartable on the same port."""

    def __init__(self, name: str, argv: list[str], ready_url: str, log: Path, settings: Settings) -> None:
        self.name, self.argv, self.ready_url, self.log = name, argv, ready_url, log
        self.session = monitoring_session(settings)  # TLS and basic auth, as the stack runs them
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        poll(f"{self.name} ready", lambda: self.session.get(self.ready_url, timeout=1).status_code == 200, 20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    rec = Recorder(free_port())
    rec.start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    port = free_port()
    data = tmp_path_factory.mktemp("pushgateway")
    settings = Settings(data_dir=data, prometheus={"pushgateway_port": port})
    (data / "pushgateway").mkdir()
    cfg = config_dir(settings)
    render_configs(settings, cfg)  # its web config: TLS and the password
    url = f"{settings.prometheus.pushgateway_url}/-/ready"
    server = Server("pushgateway", pushgateway_argv(settings, cfg), url, data / "pg.log", settings)
    server.start()
    yield settings
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings, recorder: Recorder, pushgateway: Settings) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        data_dir=tmp_path / "data",
        kafka=kafka_settings.model_copy(update={"anomalies_topic": f"vigil.anomalies.{tag}", "partitions": 2}),
        prometheus={
            "alertmanager_port": free_port(),
            "pushgateway_port": pushgateway.prometheus.pushgateway_port,
            "push_interval_s": 0.5,
            # The module's Pushgateway took the password of its own data dir; Alertmanager here renders with it.
            "password_file": pushgateway.monitoring_password_path,
        },
        alerting={
            "publisher_consumer_group": f"alert-publisher-{tag}",
            "resolve_after_clear_windows": 2,
            "page_after_windows": 1,  # page on the first anomalous window (persistence: test_alert_mapping.py)
            "page_within_windows": 1,
            "page_min_score": 0.0,
            "alert_ttl_s": 120,
            "repost_interval_s": 2,
            "relay_port": recorder.port,
            "console_url": "http://console.test",
        },
    )
    ensure_topics(settings.kafka.as_identity("admin"), topics=[settings.kafka.anomalies_topic])
    recorder.calls.clear()
    return settings


@pytest.fixture
def alertmanager(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    """Alertmanager with the rendered Vigil config (routes, inhibit rules, relay receivers), as the stack runs it."""
    cfg = config_dir(settings)
    render_configs(settings, cfg)
    (settings.data_dir / "alertmanager").mkdir(parents=True, exist_ok=True)
    server = Server(
        "alertmanager",
        alertmanager_argv(settings, cfg),
        f"{settings.prometheus.alertmanager_url}/-/ready",
        tmp_path / "alertmanager.log",
        settings,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def publisher(settings: Settings, alertmanager: Server) -> Iterator[RunLoop]:
    thread = RunLoop(AlertPublisher(settings))
    yield thread
    thread.close()


# -- data ---------------------------------------------------------------------------------------------------------
BASE_MS = (int(time.time() * 1000) // W) * W - 60_000


def window_ms(n: int) -> int:
    """Start of the window ``n`` windows from a recent base (real time: alerts then look like real ones)."""
    return BASE_MS + n * W


def verdict(
    eid: str,
    n: int,
    severity: str = "normal",
    *,
    site: str = "north",
    detectors: tuple[str, ...] = (),
    hits: tuple[str, ...] = (),
    top: tuple[str, ...] = (),
    kind: str = "window",
) -> dict[str, Any]:
    start = window_ms(n)
    return {
        "equipment_id": eid,
        "site": site,
        "equipment_type": "pump",
        "window_start_ms": start,
        "window_end_ms": start + W,
        "kind": kind,
        "is_anomaly": severity != "normal",
        "severity": severity,
        "score": 2.5 if severity == "critical" else (1.3 if severity == "warning" else 0.2),
        "scores": {"isolation_forest": 1.3, "rules": 0.5},
        # As the scoring job writes it: the models given, then the rules of the hits.
        "detectors": list(dict.fromkeys([*detectors, *(h.rpartition(":")[2] for h in hits)])),
        "rule_hits": list(hits),
        "top_sensors": list(top),
        "dead_sensors": [],
        "model_versions": "isolation_forest=v0007",
        "summary": f"{severity}: {', '.join(detectors)}",
        "last_seen_ms": start + W,
        "emitted_at_ms": start + W + 300,
    }


def produce(settings: Settings, records: list[dict[str, Any]]) -> None:
    producer = make_producer(settings.kafka.as_identity("admin"))
    for rec in records:
        producer.produce(settings.kafka.anomalies_topic, key=rec["equipment_id"].encode(), value=orjson.dumps(rec))
    assert producer.flush(15) == 0


def am_alerts(settings: Settings, *matchers: str) -> list[dict[str, Any]]:
    with AlertmanagerClient.for_settings(settings) as client:
        return client.get_alerts([f'source="{SOURCE}"', *matchers])


def by_condition(alerts: list[dict[str, Any]]) -> dict[tuple[str, str, str, str, str], dict[str, Any]]:
    """{(equipment_id, alertname, detector, sensor, severity): alert}"""
    return {
        tuple(a["labels"][k] for k in ("equipment_id", "alertname", "detector", "sensor", "severity")): a
        for a in alerts
    }


def publisher_lag(settings: Settings) -> int | None:
    """The publisher group's lag, read by jobs.kafka_lag (None: the group committed nothing yet)."""
    group = settings.alerting.publisher_consumer_group
    exporter = KafkaLagExporter(settings, groups={group: [settings.kafka.anomalies_topic]})
    try:
        return exporter.poll().lag.get((group, settings.kafka.anomalies_topic))
    finally:
        exporter.close()


# -- tests --------------------------------------------------------------------------------------------------------
def test_verdicts_fire_route_and_resolve(settings: Settings, publisher: RunLoop, recorder: Recorder) -> None:
    produce(
        settings,
        [
            verdict(
                "m1",
                0,
                "critical",
                detectors=("isolation_forest", "threshold_max"),
                hits=("temp:threshold_max",),
                top=("temp", "vib"),
            ),
            verdict("m2", 0, "warning", site="south", hits=("vib:zscore",), top=("vib",)),
            verdict("m3", 0),
        ],
    )
    expected = {  # one incident per machine, labelled with its hard evidence when it has some
        ("m1", ALERT_ANOMALY, "threshold_max", "temp", "critical"),
        ("m2", ALERT_ANOMALY, "zscore", "vib", "warning"),
    }
    alerts = poll("alerts in Alertmanager", lambda: (a := by_condition(am_alerts(settings))).keys() == expected and a)
    m1 = alerts[("m1", ALERT_ANOMALY, "threshold_max", "temp", "critical")]
    assert m1["labels"] == {
        "alertname": ALERT_ANOMALY,
        "severity": "critical",
        "site": "north",
        "equipment_id": "m1",
        "equipment_type": "pump",
        "sensor": "temp",
        "detector": "threshold_max",
        "source": SOURCE,
    }
    assert m1["annotations"]["console_url"] == "http://console.test/?equipment=m1"
    assert "Rule hits: temp:threshold_max" in m1["annotations"]["description"]
    assert m1["annotations"]["summary"] == "critical: isolation_forest, threshold_max"
    assert m1["startsAt"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(window_ms(0) / 1000)))
    assert m1["status"]["state"] == "active"

    # Routing in the real Alertmanager: critical -> slack + sms, warning -> slack only; one message per site.
    poll(
        "critical alerts sent to slack and sms",
        lambda: (
            {a["labels"]["equipment_id"] for a in recorder.alerts("sms")} == {"m1"}
            and {a["labels"]["equipment_id"] for a in recorder.alerts("slack")} == {"m1", "m2"}
        ),
    )
    assert not recorder.alerts("email")
    sms_sites = {(r, p["groupLabels"]["site"]) for r, p in recorder.calls if r == "sms"}
    assert sms_sites == {("sms", "north")}

    # Committed only what Alertmanager accepted: everything, here.
    poll("offsets committed", lambda: publisher_lag(settings) == 0)

    # Two clear windows of m1 resolve m1's alerts; m2 has only one clear window: still firing.
    produce(settings, [verdict("m1", 1), verdict("m1", 2), verdict("m2", 1)])
    poll("m1 resolved", lambda: {k[0] for k in by_condition(am_alerts(settings))} == {"m2"})
    poll(
        "resolution sent to sms",
        lambda: [a["labels"]["detector"] for a in recorder.alerts("sms", "resolved")] == ["threshold_max"],
    )
    produce(settings, [verdict("m2", 2)])
    poll("m2 resolved", lambda: am_alerts(settings) == [])

    # Self-metrics in the Pushgateway.
    def pushed() -> dict[str, float]:
        groups = (
            monitoring_session(settings)
            .get(f"{settings.prometheus.pushgateway_url}/api/v1/metrics", timeout=5)
            .json()["data"]
        )
        group = next(g for g in groups if g["labels"].get("job") == "vigil_alert_publisher")
        return {name: float(m["metrics"][0]["value"]) for name, m in group.items() if name.startswith("vigil_")}

    metrics = poll(
        "publisher metrics pushed",
        lambda: (m := pushed()).get("vigil_alert_publisher_verdicts_consumed_total") == 7 and m,
    )
    assert metrics["vigil_alert_publisher_alerts_firing"] == 0
    assert metrics["vigil_alert_publisher_last_post_timestamp_seconds"] > time.time() - 60
    assert metrics["vigil_alert_publisher_post_failures_total"] == 0


def test_pages_do_not_wait_for_the_jobs_commit_and_its_replay_pages_nothing_new(
    settings: Settings, publisher: RunLoop, recorder: Recorder
) -> None:
    """The scoring job's verdicts sit in a transaction until its checkpoint; the publisher pages from them at
    once (alerting.publisher_isolation_level), and when the job fails, aborts and replays the same window,
    the replay changes nothing: one alert, one page."""
    eid = f"tx-{uuid.uuid4().hex[:6]}"
    critical = verdict(eid, 0, "critical", hits=("temp:threshold_max",), top=("temp",))
    producer = make_producer(settings.kafka.as_identity("admin"), **{"transactional.id": f"test-job-{eid}"})
    producer.init_transactions(15)
    producer.begin_transaction()
    producer.produce(settings.kafka.anomalies_topic, key=eid.encode(), value=orjson.dumps(critical))
    producer.flush(15)  # written, not committed: a checkpoint still under way
    key = (eid, ALERT_ANOMALY, "threshold_max", "temp", "critical")
    poll(
        "the alert from an open transaction", lambda: key in by_condition(am_alerts(settings, f'equipment_id="{eid}"'))
    )
    producer.abort_transaction(15)  # the job failed before its checkpoint...
    producer.begin_transaction()  # ...and, restored, scores the same window again
    producer.produce(settings.kafka.anomalies_topic, key=eid.encode(), value=orjson.dumps(critical))
    producer.commit_transaction(15)
    poll("the replay consumed", lambda: publisher.service.counters.verdicts_consumed >= 2)
    # Committed up to the last record; the transaction's commit marker after it is not a record an uncommitted
    # reader steps over, so it stays as a lag of one (kafka_lag's alert has a floor for that).
    poll("offsets committed", lambda: (lag := publisher_lag(settings)) is not None and lag <= 1)
    assert set(by_condition(am_alerts(settings, f'equipment_id="{eid}"'))) == {key}
    pages = poll("the page", lambda: [a for a in recorder.alerts("sms") if a["labels"]["equipment_id"] == eid])
    time.sleep(2)  # a second page would follow within Alertmanager's group_wait
    assert len([a for a in recorder.alerts("sms") if a["labels"]["equipment_id"] == eid]) == len(pages) == 1


def test_alertmanager_down_nothing_committed_then_delivered(
    settings: Settings, alertmanager: Server, publisher: RunLoop
) -> None:
    produce(settings, [verdict("d1", 0)])
    poll("first verdict committed", lambda: publisher_lag(settings) == 0)
    alertmanager.stop()
    produce(settings, [verdict("d1", 1, "warning", hits=("temp:stuck",), top=("temp",))])
    poll("the publisher retrying the POST", lambda: publisher.service.counters.post_failures >= 2)
    assert publisher.service.counters.verdicts_consumed == 2
    assert publisher_lag(settings) == 1  # the anomalous verdict is consumed but not committed
    alertmanager.start()  # a fresh Alertmanager: it knows nothing until the publisher's retry gets through
    alerts = poll("alert delivered after Alertmanager is back", lambda: by_condition(am_alerts(settings)))
    assert set(alerts) == {("d1", ALERT_ANOMALY, "stuck", "temp", "warning")}
    poll("offset committed after delivery", lambda: publisher_lag(settings) == 0)


def test_restarted_publisher_rebuilds_its_alerts_and_resolves_them(settings: Settings, alertmanager: Server) -> None:
    first = RunLoop(AlertPublisher(settings))
    try:
        produce(
            settings,
            [
                verdict("r1", 0, "warning", detectors=("pca_t2q",), top=("vib", "temp")),
                verdict("r1", 1, "critical", detectors=("pca_t2q",), top=("temp",)),  # escalates; top sensor moved
                verdict("r2", 1, "critical", kind="dead_machine", detectors=("dead_machine",)),
            ],
        )
        expected = {
            ("r1", ALERT_ANOMALY, "pca_t2q", "vib", "warning"),
            ("r1", ALERT_ANOMALY, "pca_t2q", "vib", "critical"),
            ("r2", ALERT_ANOMALY, "dead_machine", "*", "critical"),
        }
        poll("alerts fired", lambda: set(by_condition(am_alerts(settings))) == expected)
    finally:
        first.close()

    second = RunLoop(AlertPublisher(settings))
    try:
        poll("active set rebuilt from Alertmanager", lambda: second.service.counters.alerts_firing == 3)
        # The model still fires (other top sensor): same alerts, nothing new. Then the machines are back / clear.
        produce(settings, [verdict("r1", 2, "warning", detectors=("pca_t2q",), top=("temp",)), verdict("r2", 2)])
        produce(settings, [verdict("r2", 3)])
        poll(
            "the dead machine's incident resolved after 2 windows with data",
            lambda: (
                set(by_condition(am_alerts(settings)))
                == expected - {("r2", ALERT_ANOMALY, "dead_machine", "*", "critical")}
            ),
        )
        produce(settings, [verdict("r1", 3), verdict("r1", 4)])
        poll("rebuilt alerts resolved after 2 clear windows", lambda: am_alerts(settings) == [])
        assert second.service.counters.verdicts_consumed == 5  # nothing the first one committed was re-read
    finally:
        second.close()


def test_inhibition_and_silences_in_alertmanager(settings: Settings, publisher: RunLoop) -> None:
    produce(
        settings,
        [
            verdict("i1", 0, "warning", site="plant-a", hits=("temp:threshold_max",), top=("temp",)),
            verdict("i2", 0, "warning", site="plant-b", hits=("flow:zscore",), top=("flow",)),
        ],
    )
    poll("both alerts active", lambda: len(am_alerts(settings)) == 2)
    with AlertmanagerClient.for_settings(settings) as client:
        # Prometheus' site dead-man for plant-a (posted as Prometheus would): mutes plant-a's machine alerts only.
        client.post_alerts(
            [
                {
                    "labels": {
                        "alertname": "VigilSiteSilent",
                        "site": "plant-a",
                        "severity": "critical",
                        "category": "equipment",
                    }
                }
            ]
        )

        def states() -> dict[str, str]:
            return {a["labels"]["equipment_id"]: a["status"]["state"] for a in am_alerts(settings)}

        poll("plant-a's alert inhibited by the site alert", lambda: states() == {"i1": "suppressed", "i2": "active"})
        i1 = by_condition(am_alerts(settings))[("i1", ALERT_ANOMALY, "threshold_max", "temp", "warning")]
        assert len(i1["status"]["inhibitedBy"]) == 1

        # Escalation: the critical twin mutes the warning one (equal alertname, equipment_id, detector, sensor).
        produce(settings, [verdict("i2", 1, "critical", site="plant-b", hits=("flow:zscore",), top=("flow",))])
        twins = poll(
            "critical twin posted",
            lambda: (a := by_condition(am_alerts(settings, 'equipment_id="i2"'))) and len(a) == 2 and a,
        )
        poll(
            "warning twin inhibited by the critical one",
            lambda: (
                {k[4]: a["status"]["state"] for k, a in by_condition(am_alerts(settings, 'equipment_id="i2"')).items()}
                == {"critical": "active", "warning": "suppressed"}
            ),
        )
        assert set(twins) == {("i2", ALERT_ANOMALY, "zscore", "flow", s) for s in ("warning", "critical")}

        # Silences through the client (what the CLI will call).
        silence_id = client.create_silence(['equipment_id="i2"'], 600, comment="pump swap", created_by="test")
        poll(
            "i2 silenced",
            lambda: all(a["status"]["silencedBy"] == [silence_id] for a in am_alerts(settings, 'equipment_id="i2"')),
        )
        assert [s["id"] for s in client.list_silences(['equipment_id="i2"'])] == [silence_id]
        client.expire_silence(silence_id)
        assert client.list_silences(['equipment_id="i2"']) == []
        assert [s["id"] for s in client.list_silences(include_expired=True)] == [silence_id]
        poll(
            "i2 no longer silenced",
            lambda: all(not a["status"]["silencedBy"] for a in am_alerts(settings, 'equipment_id="i2"')),
        )


def test_a_planned_demo_stop_is_silenced_and_the_next_demo_ends_the_silence(
    settings: Settings, alertmanager: Server
) -> None:
    console = Console(file=io.StringIO())
    silence_planned_stop(settings, console)
    with AlertmanagerClient.for_settings(settings) as client:
        client.post_alerts([{"labels": {"alertname": "VigilSiteSilent", "site": "plant-z", "severity": "critical"}}])
        mine = [s for s in client.list_silences() if s["createdBy"] == PLANNED_BY]
        assert len(mine) == 1
        poll(
            "the site's dead-man silenced during the planned stop",
            lambda: [a["status"]["silencedBy"] for a in client.get_alerts(['site="plant-z"'])] == [[mine[0]["id"]]],
        )
        assert end_planned_stop(settings, console) == 1
        assert [s for s in client.list_silences() if s["createdBy"] == PLANNED_BY] == []
        poll(
            "no longer silenced",
            lambda: [a["status"]["silencedBy"] for a in client.get_alerts(['site="plant-z"'])] == [[]],
        )
    assert console.file.getvalue() == ""  # nothing to warn about


def test_unreachable_alertmanager_says_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with AlertmanagerClient(url) as client, pytest.raises(AlertmanagerUnavailable, match="cannot reach Alertmanager"):
        client.post_alerts([{"labels": {"alertname": "x"}}])


def test_kafka_lag_exporter_pushes_lag_per_group(settings: Settings, publisher: RunLoop) -> None:
    """jobs.kafka_lag against real Kafka and the Pushgateway: committed groups only, with their lag."""
    # Two batches, so the end offset counts records of two produce requests.
    produce(settings, [verdict("k1", 0)])
    produce(settings, [verdict("k1", 1)])
    poll("publisher committed", lambda: publisher_lag(settings) == 0)
    exporter = KafkaLagExporter(settings)
    try:
        snapshot = exporter.poll()
        assert snapshot.lag[(settings.alerting.publisher_consumer_group, settings.kafka.anomalies_topic)] == 0
        # The other groups never committed on this test's topic: not reported (not deployed here).
        assert [g for g, t in snapshot.lag if t == settings.kafka.anomalies_topic] == [
            settings.alerting.publisher_consumer_group
        ]
        assert snapshot.end_offsets[settings.kafka.anomalies_topic] == 2
        assert exporter.push()
    finally:
        exporter.close()
    groups = (
        monitoring_session(settings)
        .get(f"{settings.prometheus.pushgateway_url}/api/v1/metrics", timeout=5)
        .json()["data"]
    )
    lag = next(g for g in groups if g["labels"].get("job") == "vigil_kafka_lag")["vigil_kafka_consumer_lag"]
    assert {"group": settings.alerting.publisher_consumer_group, "topic": settings.kafka.anomalies_topic} in [
        {k: m["labels"][k] for k in ("group", "topic")} for m in lag["metrics"]
    ]
