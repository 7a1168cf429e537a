"""The local Apache Kafka broker as `vigil stack` runs it: durable across restarts and crashes, transactions that
read_committed consumers honour, and an orphaned transaction that blocks readers only until its timeout."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from pydantic import SecretStr

from connectors.kafka import ensure_topics, make_consumer, make_producer
from operations.chaos import BALLAST, Target, fill_filesystem, free_broker_disk, kill
from operations.stack import kafka_broker
from operations.stack.services import Stack
from tests.conftest import local_kafka_settings
from vigil.settings import Settings

pytestmark = pytest.mark.integration

TOPIC = "vigil.telemetry"


@pytest.fixture
def stack(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, kafka=local_kafka_settings(partitions=2, transaction_timeout_ms=10_000))
    stack = Stack(settings)
    stack.up(("kafka",))
    try:
        yield stack
    finally:
        stack.down(("kafka",))


def produce(settings: Settings, n: int, prefix: str) -> None:
    producer = make_producer(settings.kafka.as_identity("admin"))
    for i in range(n):
        producer.produce(TOPIC, key=f"m-{i % 7}", value=f"{prefix}-{i}".encode())
    assert producer.flush(30) == 0, "every record acknowledged (acks=all)"


def read_all(settings: Settings, group: str, expect: int, timeout_s: float = 30.0) -> list[str]:
    consumer = make_consumer(settings.kafka.as_identity("admin"), group, **{"auto.offset.reset": "earliest"})
    consumer.subscribe([TOPIC])
    values: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(values) < expect:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    values.append(message.value().decode())
        # a little longer: nothing beyond what is expected may arrive
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            values += [m.value().decode() for m in consumer.consume(500, timeout=0.2) if m.error() is None]
    finally:
        consumer.close()
    return values


@pytest.mark.parametrize("how", ["stop", "sigkill"])
def test_acknowledged_records_survive_a_broker_restart(stack: Stack, how: str) -> None:
    settings = stack.settings
    produce(settings, 100, "before")
    if how == "stop":
        stack.down(("kafka",))
    else:
        kill(stack, "kafka")
    stack.up(("kafka",))
    produce(settings, 10, "after")
    values = read_all(settings, f"restart-{how}", expect=110)
    assert sorted(values) == sorted([f"before-{i}" for i in range(100)] + [f"after-{i}" for i in range(10)])


def test_read_committed_consumers_never_see_aborted_records(stack: Stack) -> None:
    settings = stack.settings
    ensure_topics(settings.kafka.as_identity("admin"))
    producer = Producer(settings.kafka.as_identity("admin").client_config() | {"transactional.id": "test-aborts"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(TOPIC, key="m", value=f"aborted-{i}".encode())
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(TOPIC, key="m", value=f"committed-{i}".encode())
    producer.commit_transaction(30)
    assert sorted(read_all(settings, "read-committed", expect=5)) == [f"committed-{i}" for i in range(5)]


ORPHAN = """
import json, os, sys
from confluent_kafka import Producer
producer = Producer(json.loads(sys.argv[1]) | {"transactional.id": "test-orphan",
                     "transaction.timeout.ms": int(sys.argv[2])})
producer.init_transactions(30)
producer.begin_transaction()
producer.produce(sys.argv[3], key=b"m", value=b"orphaned")
producer.flush(30)
os._exit(0)  # a crash: the transaction stays open, neither committed nor aborted
"""


def test_an_orphaned_transaction_blocks_readers_only_until_its_timeout(stack: Stack) -> None:
    settings = stack.settings
    ensure_topics(settings.kafka.as_identity("admin"))
    timeout_ms = settings.kafka.transaction_timeout_ms
    admin_conf = settings.kafka.as_identity("admin").client_config()
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ORPHAN), json.dumps(admin_conf), str(timeout_ms), TOPIC],
        check=True,
        timeout=60,
    )
    orphaned_at = time.monotonic()
    produce(settings, 1, "behind-the-orphan")  # same key, same partition: behind the open transaction
    values = read_all(settings, "after-orphan", expect=1, timeout_s=timeout_ms / 1000 + 30)
    waited = time.monotonic() - orphaned_at
    assert values == ["behind-the-orphan-0"], "the orphan's record is aborted, the later one delivered"
    # The broker aborts it once transaction.timeout.ms passed (its check runs every 10 s by default).
    assert waited <= timeout_ms / 1000 + 25, f"readers blocked {waited:.0f} s behind an orphaned transaction"


def test_topics_are_vigils_own_and_dead_letters_are_capped_by_size(stack: Stack) -> None:
    kafka = stack.settings.kafka.as_identity("admin")
    admin = AdminClient(kafka.client_config())
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in (kafka.dead_letter_topic, TOPIC)]
    configs = {r.name: f.result(30) for r, f in admin.describe_configs(resources).items()}
    assert configs[kafka.dead_letter_topic]["retention.bytes"].value == str(kafka.dead_letter_retention_bytes)
    assert configs[TOPIC]["retention.ms"].value == str(kafka.retention_ms)
    assert len(admin.list_topics(timeout=30).topics[TOPIC].partitions) == kafka.partitions
    producer = Producer(kafka.client_config() | {"message.timeout.ms": 5000})
    errors: list[KafkaError] = []
    producer.produce("vigil.telemetyr", value=b"x", on_delivery=lambda err, _: errors.append(err))
    producer.flush(15)
    assert errors and errors[0] is not None, "a misspelt topic is refused, not created"
    # The window-stats job marks kafka.partitions partitions: a topic with another count is refused, clearly.
    other = kafka.model_copy(update={"partitions": kafka.partitions + 1})
    with pytest.raises(RuntimeError, match=f"has {kafka.partitions} partitions but kafka.partitions is"):
        ensure_topics(other)


def _try_produce(conf: dict, topic: str) -> KafkaError | None:
    """One record; the delivery error (None: acknowledged). Fails fast: an unauthenticated client retries."""
    producer = Producer(conf | {"message.timeout.ms": 3000, "socket.timeout.ms": 3000})
    errors: list[KafkaError | None] = []
    producer.produce(topic, key=b"m", value=b"x", on_delivery=lambda err, _: errors.append(err))
    producer.flush(15)
    return errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT)


def _read_one(conf: dict, topic: str, group: str) -> KafkaError | bytes | None:
    """Subscribe and poll briefly: the first error the broker sent, else the first record's value (None: neither)."""
    consumer = Consumer(conf | {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                return message.error() or message.value()
        return None
    finally:
        consumer.close()


def test_only_a_principal_with_the_right_acls_reaches_a_topic(stack: Stack) -> None:
    """SCRAM over TLS 1.3 only; each component's principal writes and reads exactly its topics."""
    kafka = stack.settings.kafka
    admin = kafka.as_identity("admin")
    ensure_topics(admin)
    plain = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": "PLAINTEXT"}
    assert _try_produce(plain, TOPIC) is not None, "a client without TLS and SASL is refused"
    wrong = admin.model_copy(update={"sasl_username": "vigil-edge", "sasl_password": SecretStr("guess")})
    error = _try_produce(wrong.client_config(), TOPIC)
    assert error is not None and error.code() in (KafkaError._AUTHENTICATION, KafkaError._MSG_TIMED_OUT), error
    host, port = kafka.bootstrap_servers.rsplit(":", 1)
    context = ssl.create_default_context(cafile=kafka.ssl_ca_location)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), socket.create_connection((host, int(port)), timeout=10) as raw:
        context.wrap_socket(raw, server_hostname=host)
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host):
        pass  # the broker's certificate checks out against the local CA, for its address
    edge = kafka.as_identity("edge").client_config()
    assert _try_produce(edge, kafka.telemetry_topic) is None, "the edge writes telemetry"
    refused = _try_produce(edge, kafka.anomalies_topic)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
    sinks = kafka.as_identity("sinks").client_config()
    refused = _try_produce(sinks, kafka.telemetry_topic)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
    alerting = kafka.as_identity("alerting").client_config()
    group = stack.settings.alerting.publisher_consumer_group
    refused = _read_one(alerting, kafka.telemetry_topic, group)
    assert isinstance(refused, KafkaError) and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
    refused = _read_one(alerting, kafka.anomalies_topic, "someone-elses-group")
    assert isinstance(refused, KafkaError) and refused.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, refused
    assert _try_produce(admin.client_config(), kafka.anomalies_topic) is None  # something to read at once
    assert _read_one(alerting, kafka.anomalies_topic, group) == b"x"


def produce_tracking(settings: Settings, n: int, prefix: str, timeout_ms: int) -> tuple[set[str], set[str]]:
    """Produce ``n`` records of 2 KB (the broker must need new pages for them); returns the names (the value
    before ``|``) Kafka acknowledged and those it did not."""
    producer = make_producer(settings.kafka.as_identity("admin"), **{"message.timeout.ms": timeout_ms})
    acked: set[str] = set()
    failed: set[str] = set()

    def report(err: KafkaError | None, message) -> None:
        (failed if err is not None else acked).add(message.value().decode().split("|")[0])

    for i in range(n):
        value = f"{prefix}-{i}|{'x' * 2048}".encode()
        producer.produce(TOPIC, key=f"m-{i % 7}", value=value, on_delivery=report)
        producer.poll(0)
    producer.flush(timeout_ms / 1000 + 10)
    return acked, failed


def test_a_full_disk_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """The broker's filesystem fills up: what it acknowledged before and during stays readable, once, after the
    space is freed and the broker restarted (vigil chaos's kafka-disk-full heals the same way)."""
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a filesystem of its own, and mounting one (a tmpfs) needs root here")
    settings = Settings(data_dir=tmp_path, kafka=local_kafka_settings(partitions=2))
    broker = kafka_broker.broker_dir(settings)
    broker.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", str(broker)], check=True)
    stack = Stack(settings)
    try:
        stack.up(("kafka",))
        produce(settings, 300, "before")
        assert fill_filesystem(broker / BALLAST) > 0
        acked, failed = produce_tracking(settings, 2000, "during", timeout_ms=10_000)
        assert failed, "the full disk refused nothing: the fault did not bite"
        free_broker_disk(Target(stack, []))
        produce(settings, 300, "after")
        expected = {f"before-{i}" for i in range(300)} | acked | {f"after-{i}" for i in range(300)}
        values = [v.split("|")[0] for v in read_all(settings, "disk-full-reader", expect=len(expected), timeout_s=60)]
        assert not expected - set(values), f"{len(expected - set(values))} acknowledged records lost"
        assert len(values) == len(set(values)), "a record was written twice"
        assert set(values) <= expected | failed
    finally:
        stack.down(("kafka",))
        subprocess.run(["umount", "-l", str(broker)], check=False)
