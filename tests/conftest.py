"""Shared fixtures: free ports and real local servers (no mocks of our own stack)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from connectors.clickhouse import apply_schema, make_client
from edge.tls import channel_credentials
from operations.certs import ensure_local_certs
from operations.stack import kafka_broker
from operations.stack.services import FAULT_PROXY, INFRA, PIPELINE, Stack
from vigil.settings import (
    AgentsSettings,
    AlertingSettings,
    ChaosSettings,
    ClickHouseSettings,
    ConsoleSettings,
    EdgeSettings,
    FlinkSettings,
    KafkaSettings,
    PrometheusSettings,
    ScoringSettings,
    Settings,
    WindowSettings,
)


def pytest_configure(config: pytest.Config) -> None:
    """One local CA and edge/gateway certificates for the whole session (every Settings() of the tests and of
    the servers they start reads VIGIL_TLS_DIR), so each test's edge speaks mTLS as the real stack does."""
    if "VIGIL_TLS_DIR" not in os.environ:
        os.environ["VIGIL_TLS_DIR"] = tempfile.mkdtemp(prefix="vigil-test-certs-")
    ensure_local_certs(Settings())


def job_settings(**kwargs: Any) -> Settings:
    """Settings to render a Flink job's statements with: its Kafka options hold a principal's password, which a
    test that never connects takes from here rather than from the stack's secrets."""
    kafka = KafkaSettings(sasl_username="vigil-test", sasl_password=SecretStr("not-a-secret"))
    return Settings(kafka=kafka, **kwargs)


def edge_channel(settings: Settings, cert: Path | None = None, key: Path | None = None, **kwargs: Any) -> grpc.Channel:
    """A gRPC channel to the test's edge as the local gateway (or as ``cert``/``key``)."""
    target = f"{settings.edge.host}:{settings.edge.port}"
    return grpc.secure_channel(target, channel_credentials(settings, cert, key), **kwargs)


def free_port() -> int:
    """A TCP port nobody listens on right now (tests never collide with running services)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def local_kafka_settings(**kwargs: Any) -> KafkaSettings:
    """Kafka settings for a private broker: free broker and controller ports."""
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", local_controller_port=free_port(), **kwargs)


def start_kafka_broker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """The stack's own Apache Kafka broker (operations/stack/kafka_broker.py) on the settings' ports."""
    spec = kafka_broker.broker_spec(settings)
    assert spec.prepare is not None
    spec.prepare()
    with log_path.open("ab") as out:
        proc = subprocess.Popen(spec.argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(spec.port, timeout=spec.start_timeout_s)
    except TimeoutError:
        proc.kill()
        raise TimeoutError(f"the Kafka broker did not listen on {spec.port}; its log: {log_path}") from None
    return proc


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """A real Apache Kafka broker on free ports, for the whole test session."""
    data = tmp_path_factory.mktemp("kafka")
    settings = Settings(data_dir=data, kafka=local_kafka_settings())
    proc = start_kafka_broker(settings, data / "kafka.log")
    # One identity for every client of these tests, as for a cluster of your own: the admin principal (the
    # stack's tests run each component as its own, under its ACLs).
    user, password = settings.kafka.as_identity("admin").credentials()
    try:
        yield settings.kafka.model_copy(update={"sasl_username": user, "sasl_password": SecretStr(password)})
    finally:
        proc.terminate()
        proc.wait(30)


def stack_test_settings(data_dir: Path) -> Settings:
    """Settings for a private stack: free ports everywhere, short lateness so windows close fast."""
    return Settings(
        data_dir=data_dir,
        # The edge reaches the broker through the fault proxy, as in `vigil chaos` (its blackhole fault).
        kafka=local_kafka_settings(partitions=2, local_edge_port=free_port()),
        edge=EdgeSettings(
            port=free_port(), metrics_port=free_port(), kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"
        ),
        chaos=ChaosSettings(proxy_api_port=free_port()),
        # No source idleness: a partition marked idle while the job waits for the first data would let the
        # other partition race ahead when a test sends a burst of past data, turning on-time records late.
        window=WindowSettings(allowed_lateness_ms=2000, source_idle_timeout_ms=0),
        # Share the project's compiled UDF jar instead of compiling it per test session.
        flink=FlinkSettings(
            rest_port=free_port(), parallelism=1, checkpoint_interval_ms=2000, jars_dir=Settings().jars_dir
        ),
        scoring=ScoringSettings(rest_port=free_port()),
        agents=AgentsSettings(rest_port=free_port()),
        clickhouse=ClickHouseSettings(port=free_port(), flush_interval_s=0.2),
        prometheus=PrometheusSettings(
            prometheus_port=free_port(),
            pushgateway_port=free_port(),
            alertmanager_port=free_port(),
            scrape_interval_s=1,
            push_interval_s=1.0,
        ),
        alerting=AlertingSettings(
            relay_port=free_port(),
            standin_port=free_port(),
            standin_smtp_port=free_port(),
            console_url="http://console.test:18501",
            backoff_initial_s=0.05,
            backoff_max_s=1.0,
        ),
        console=ConsoleSettings(port=free_port()),
    )


@pytest.fixture(scope="session")
def pipeline_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole local stack and pipeline (edge, Flink job, sinks) on free ports, once per session."""
    settings = stack_test_settings(tmp_path_factory.mktemp("stack"))
    stack = Stack(settings)
    try:
        stack.up(FAULT_PROXY + INFRA + PIPELINE)
        yield stack
    finally:
        stack.down()


class RunLoop:
    """``service.run(stop)`` in a daemon thread, as a supervisor would run it; ``close()`` stops it, waits up to
    ``join_s`` and re-raises whatever the loop raised, so a crash fails the test instead of hiding in a thread."""

    def __init__(self, service: Any, join_s: float = 30.0) -> None:
        self.service = service
        self.join_s = join_s
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - surfaced by close()
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(self.join_s)
        assert not self.thread.is_alive(), f"{type(self.service).__name__} did not stop within {self.join_s:.0f} s"
        if self.error:
            raise self.error


def start_clickhouse_with_schema(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the local ClickHouse server and apply the schema as the admin identity, as `vigil stack up` does
    (components may only use the schema)."""
    from operations.stack.clickhouse.server import start_clickhouse_server_process

    proc = start_clickhouse_server_process(settings, log_path)
    with contextlib.closing(make_client(settings.clickhouse, "admin")) as admin:
        apply_schema(admin, settings.clickhouse)
    return proc


@contextlib.contextmanager
def clickhouse_server(
    tmp_path_factory: pytest.TempPathFactory, database: str, **names: str
) -> Iterator[ClickHouseSettings]:
    """A ClickHouse server (chDB) on a free port with a fresh data directory and the schema, for one test module
    (``names``: table-name settings; the server grants its identities on these)."""
    from operations.stack.clickhouse.server import stop_clickhouse_server_process

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("vigil-ch"),
        clickhouse=ClickHouseSettings(port=free_port(), database=database, **names),
    )
    proc = start_clickhouse_with_schema(settings, settings.logs_dir / "clickhouse.log")
    try:
        yield settings.clickhouse
    finally:
        stop_clickhouse_server_process(proc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``streams_live`` run last: real-time data moves the shared job's watermark to now, and the
    other pipeline tests send data from a minute ago, which would then be dead-lettered as late. Those marked
    ``kills_services`` run after them: they kill shared servers and stream a fleet of their own."""

    def order(item: pytest.Item) -> tuple[bool, bool]:
        kills = item.get_closest_marker("kills_services") is not None
        return kills or item.get_closest_marker("streams_live") is not None, kills

    items.sort(key=order)


@dataclass
class LiveFleet:
    """A simulated fleet streaming in real time through ``pipeline_stack`` (see :func:`live_fleet`)."""

    settings: Settings  # the stack's, plus the fleet's equipment registry (lines) for the console
    fleet: Any  # edge.simulator.fleet.Fleet

    def ids(self, site: str | None = None) -> set[str]:
        return {m.equipment_id for m in self.fleet.machines if site is None or m.site == site}


LIVE_FLEET_MACHINES = 12  # 6 per site


@pytest.fixture(scope="session")
def live_fleet(pipeline_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    """12 machines on 2 sites streaming in real time (after 2 minutes of history) with frequent faults, until the
    session ends; yields once every machine has a verdict in ClickHouse. Only for ``streams_live`` tests."""
    from connectors.clickhouse import make_client
    from edge.simulator.fleet import Fleet
    from edge.simulator.runner import run_simulation
    from operations.demo import _sender_factory

    stack_settings = pipeline_stack.settings
    # Own machine names: other tests' fleets (pump-0001 ...) reported to the same stack from other sites.
    fleet = Fleet(LIVE_FLEET_MACHINES, sites=2, seed=5, fault_rate_per_machine_hour=40.0, id_prefix="live-")
    registry = fleet.write_registry(tmp_path_factory.mktemp("fleet") / "registry.csv")
    settings = stack_settings.model_copy(
        update={"edge": stack_settings.edge.model_copy(update={"equipment_registry": registry})}
    )  # the console reads lines from it; the running edge does not
    stop = threading.Event()
    make_sender = _sender_factory(stack_settings)
    run_simulation(stack_settings, realtime=False, duration_s=120, fleet=fleet, make_sender=make_sender, streams=2)
    thread = threading.Thread(
        target=run_simulation,
        daemon=True,
        kwargs=dict(settings=stack_settings, realtime=True, stop=stop, fleet=fleet, make_sender=make_sender, streams=2),
    )
    thread.start()
    try:
        client = make_client(settings.clickhouse, "admin")
        ids = [m.equipment_id for m in fleet.machines]
        since = time.time()
        deadline = time.monotonic() + 240
        while client.query(
            "SELECT uniqExact(equipment_id) FROM machine_state WHERE equipment_id IN {ids:Array(String)} "
            "AND emitted_at >= fromUnixTimestamp64Milli({since:Int64})",
            parameters={"ids": ids, "since": int(since * 1000)},
        ).result_rows[0][0] < len(ids):
            assert time.monotonic() < deadline, "no fresh verdict for every machine in machine_state within 240 s"
            time.sleep(1.0)
        yield LiveFleet(settings, fleet)
    finally:
        stop.set()
        thread.join(30)
