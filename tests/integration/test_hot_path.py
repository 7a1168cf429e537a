"""Hot path end to end on real servers: Apache Kafka -> PushgatewaySink -> Pushgateway -> Prometheus,
with Alertmanager attached and the Vigil rules loaded."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from connectors.kafka import ensure_topics, make_producer
from connectors.monitoring import monitoring_access, monitoring_session
from jobs.pushgateway_sink import PushgatewaySink
from operations.stack.prometheus_configs import start_hot_path, stop_hot_path
from tests.conftest import RunLoop, free_port
from vigil.settings import KafkaSettings, Settings

pytestmark = pytest.mark.integration


def poll(what: str, check: Callable[[], Any], timeout_s: float = 25.0) -> Any:
    """Call ``check`` until it returns something truthy; fail with its last value at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except requests.RequestException as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:8]
    topic = f"vigil.window-stats.{tag}"
    # The sink also consumes the anomalies topic: a private one, so no other test's verdicts show up here.
    anomalies = f"vigil.anomalies.{tag}"
    settings = Settings(
        data_dir=tmp_path / "data",
        kafka=kafka_settings.model_copy(
            update={"window_stats_topic": topic, "anomalies_topic": anomalies, "partitions": 2}
        ),
        prometheus={
            "prometheus_port": free_port(),
            "pushgateway_port": free_port(),
            "alertmanager_port": free_port(),
            "scrape_interval_s": 1,
            "push_interval_s": 0.5,
            "exported_stats": ["avg", "max"],
        },
    )
    ensure_topics(settings.kafka.as_identity("admin"), topics=[topic])
    procs = start_hot_path(settings, tmp_path / "logs")
    try:
        yield settings
    finally:
        stop_hot_path(procs)


def window(
    equipment_id: str, site: str, sensor: str, end_ms: int, avg: float, max_: float, unit: str = "C"
) -> dict[str, Any]:
    return {
        "equipment_id": equipment_id,
        "site": site,
        "equipment_type": "pump",
        "sensor": sensor,
        "unit": unit,
        "window_start_ms": end_ms - 5000,
        "window_end_ms": end_ms,
        "count": 50,
        "avg": avg,
        "stddev": 0.1,
        "min": 0.0,
        "max": max_,
        "emitted_at_ms": end_ms + 300,
    }


def produce(settings: Settings, records: list[dict[str, Any]]) -> None:
    producer = make_producer(settings.kafka.as_identity("admin"))
    for rec in records:
        producer.produce(settings.kafka.window_stats_topic, key=rec["equipment_id"].encode(), value=orjson.dumps(rec))
    assert producer.flush(15) == 0


def pushgateway_values(settings: Settings, metric: str) -> dict[tuple[str, ...], float]:
    """{(site, equipment_id[, sensor]): value} of one metric across all Pushgateway groups."""
    data = (
        monitoring_session(settings)
        .get(f"{settings.prometheus.pushgateway_url}/api/v1/metrics", timeout=5)
        .json()["data"]
    )
    out = {}
    for group in data:
        for m in group.get(metric, {}).get("metrics", []):
            labels = m["labels"]
            key = tuple(labels[k] for k in ("site", "equipment_id", "sensor", "unit") if k in labels)
            out[key] = float(m["value"])
    return out


def prom_query(settings: Settings, query: str) -> list[dict[str, Any]]:
    resp = monitoring_session(settings).get(
        f"{settings.prometheus.prometheus_url}/api/v1/query", params={"query": query}, timeout=5
    )
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def test_window_stats_reach_pushgateway_and_prometheus(settings: Settings) -> None:
    end = (int(time.time() * 1000) // 5000) * 5000
    weird_unit = 'm/s "rms" \\ peak'
    produce(
        settings,
        [
            window("m1", "north", "temp", end - 5000, 10.0, 11.0),
            window("m1", "north", "temp", end, 20.5, 21.0),  # newer window wins
            window("m1", "north", "vib", end, 0.25, 0.5, unit=weird_unit),
            window("m2", "north", "temp", end, -4.0, 1.0),
            window("m3", "south/2", "temp", end - 5000, 7.0, 8.0),
            window("m1", "north", "temp", end - 10_000, 99.0, 99.0),  # late older window: ignored
        ],
    )
    first = RunLoop(PushgatewaySink(settings), join_s=20)
    expected_avg = {
        ("north", "m1", "temp", "C"): 20.5,
        ("north", "m1", "vib", weird_unit): 0.25,
        ("north", "m2", "temp", "C"): -4.0,
        ("south/2", "m3", "temp", "C"): 7.0,
    }
    try:
        poll("avg gauges in the Pushgateway", lambda: pushgateway_values(settings, "vigil_window_avg") == expected_avg)
        assert pushgateway_values(settings, "vigil_window_max") == {
            ("north", "m1", "temp", "C"): 21.0,
            ("north", "m1", "vib", weird_unit): 0.5,
            ("north", "m2", "temp", "C"): 1.0,
            ("south/2", "m3", "temp", "C"): 8.0,
        }
        assert pushgateway_values(settings, "vigil_window_stddev") == {}  # not an exported stat
        assert pushgateway_values(settings, "vigil_equipment_last_window_end_seconds") == {
            ("north", "m1"): end / 1000,
            ("north", "m2"): end / 1000,
            ("south/2", "m3"): end / 1000 - 5,
        }
        assert pushgateway_values(settings, "vigil_site_machines_reporting") == {("north",): 2, ("south/2",): 1}

        def prom_avg() -> dict[tuple[str, ...], float]:
            return {
                (r["metric"]["site"], r["metric"]["equipment_id"], r["metric"]["sensor"], r["metric"]["unit"]): float(
                    r["value"][1]
                )
                for r in prom_query(settings, "vigil_window_avg")
            }

        poll("vigil_window_avg scraped by Prometheus", lambda: prom_avg() == expected_avg)
        series = prom_query(settings, 'vigil_window_avg{equipment_id="m3"}')[0]["metric"]
        # honor_labels keeps the pushed job; the Pushgateway's empty instance label is dropped.
        assert series == {
            "__name__": "vigil_window_avg",
            "job": "vigil_window_stats",
            "site": "south/2",
            "equipment_id": "m3",
            "equipment_type": "pump",
            "sensor": "temp",
            "unit": "C",
        }
        poll(
            "sink counter scraped",
            lambda: [float(r["value"][1]) for r in prom_query(settings, "vigil_sink_windows_consumed_total")] == [6.0],
        )

        # Alertmanager attached and the rules loaded.
        poll(
            "Prometheus discovers the Alertmanager",
            lambda: (
                [
                    a["url"]
                    for a in monitoring_session(settings)
                    .get(f"{settings.prometheus.prometheus_url}/api/v1/alertmanagers", timeout=5)
                    .json()["data"]["activeAlertmanagers"]
                ]
                == [f"{settings.prometheus.alertmanager_url}/api/v2/alerts"]
            ),
        )
        groups = (
            monitoring_session(settings)
            .get(f"{settings.prometheus.prometheus_url}/api/v1/rules", timeout=5)
            .json()["data"]["groups"]
        )
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert {
            "VigilPushgatewayDown",
            "VigilPipelineStalled",
            "VigilMachineSilent",
            "VigilEdgeRejections",
            "VigilSinkNotPushing",
        } <= set(rules)
        assert all(r["health"] != "err" for r in rules.values()), [r.get("lastError") for r in rules.values()]
        assert monitoring_session(settings).get(f"{settings.prometheus.alertmanager_url}/api/v2/status", timeout=5).ok
    finally:
        first.close()
    counters = first.service.counters
    assert counters.windows_consumed == 6 and counters.failures == 0 and counters.pushes >= 1
    assert counters.series_pushed == 4 * 2 + 3 + 2  # 4 series x 2 stats, 3 machines, 2 sites

    # Restart: offsets were committed after the push, and the state is seeded from the Pushgateway,
    # so one new window for m1 replaces the "north" group without losing m2.
    second = RunLoop(PushgatewaySink(settings), join_s=20)
    try:
        produce(settings, [window("m1", "north", "temp", end + 5000, 30.0, 31.0)])
        poll(
            "new m1 window pushed by the restarted sink",
            lambda: pushgateway_values(settings, "vigil_window_avg").get(("north", "m1", "temp", "C")) == 30.0,
        )
        assert pushgateway_values(settings, "vigil_window_avg") == expected_avg | {("north", "m1", "temp", "C"): 30.0}
    finally:
        second.close()
    assert second.service.counters.windows_consumed == 1  # nothing re-read: the offsets were committed


def test_the_servers_refuse_anyone_without_tls13_and_the_password(settings: Settings) -> None:
    """Each of the three takes only TLS 1.3 with the user's password on every endpoint; lifecycle and admin
    endpoints are off even for the user."""
    p = settings.prometheus
    access = monitoring_access(settings)
    assert access.auth is not None and access.ca_file is not None
    user, password = access.auth
    servers = {"prometheus": p.prometheus_port, "pushgateway": p.pushgateway_port, "alertmanager": p.alertmanager_port}
    for name, port in servers.items():
        url = f"https://{p.host}:{port}/-/ready"
        assert requests.get(url, auth=access.auth, verify=access.ca_file, timeout=5).status_code == 200, name
        # Plain HTTP: the TLS listener answers with a 400 ("client sent an HTTP request to an HTTPS server").
        plain = requests.get(f"http://{p.host}:{port}/-/ready", auth=access.auth, timeout=5)
        assert plain.status_code == 400, (name, plain.status_code)
        assert requests.get(url, verify=access.ca_file, timeout=5).status_code == 401, name
        wrong = (user, password[:-1] + ("x" if password[-1] != "x" else "y"))
        assert requests.get(url, auth=wrong, verify=access.ca_file, timeout=5).status_code == 401, name
        assert requests.get(url, auth=("admin", password), verify=access.ca_file, timeout=5).status_code == 401, name
        # A client that stops at TLS 1.2 gets no handshake.
        tls12 = ssl.create_default_context(cafile=access.ca_file)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError), socket.create_connection((p.host, port), timeout=5) as raw:
            tls12.wrap_socket(raw, server_hostname=p.host)
        # A server certificate the CA did not sign is not trusted by the client either (the system CAs don't).
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, auth=access.auth, timeout=5)
    session = monitoring_session(settings)
    assert session.post(f"{settings.prometheus.prometheus_url}/-/quit", timeout=5).status_code == 403
    assert session.post(f"{settings.prometheus.prometheus_url}/-/reload", timeout=5).status_code == 403
    delete = session.post(
        f"{settings.prometheus.prometheus_url}/api/v1/admin/tsdb/delete_series", params={"match[]": "up"}, timeout=5
    )
    assert delete.status_code >= 400, delete.text
    assert session.put(f"{settings.prometheus.pushgateway_url}/api/v1/admin/wipe", timeout=5).status_code >= 400
    assert session.put(f"{settings.prometheus.pushgateway_url}/-/quit", timeout=5).status_code >= 400
