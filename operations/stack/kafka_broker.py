"""The local Apache Kafka broker: one KRaft node (broker and controller in one JVM), its log on disk.

The jars are Apache Kafka's own, from Maven Central (scripts/java/kafka-broker/pom.xml, fetched by
scripts/setup.sh). The log lives under ``<data_dir>/kafka/data`` and is formatted once, so topics,
committed offsets and open transactions survive a restart, and Flink's checkpointed offsets stay valid.
Transactions use ``transaction.version=2`` (KIP-890: a producer's epoch is bumped on every transaction,
so a zombie's late writes are fenced). Pointing at a real cluster is a setting (``kafka.bootstrap_servers``
and its security options); then none of this runs.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from operations.stack.process import ServiceSpec
from vigil.settings import JAVA_LIBS_DIR, Settings

BROKER_LIBS = JAVA_LIBS_DIR / "kafka-broker"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
NODE_ID = 1

LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} %p %c{1}: %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def broker_dir(settings: Settings) -> Path:
    return settings.data_dir / "kafka"


def log_dir(settings: Settings) -> Path:
    return broker_dir(settings) / "data"


def broker_port(settings: Settings) -> int:
    return int(settings.kafka.bootstrap_servers.rsplit(":", 1)[1])


def classpath() -> str:
    if not any(BROKER_LIBS.glob("kafka_2.13-*.jar")):
        raise FileNotFoundError(
            f"the Apache Kafka broker is missing from {BROKER_LIBS}: run `make setup` "
            "(it fetches Kafka from Maven Central as scripts/java/kafka-broker/pom.xml pins it)"
        )
    return str(BROKER_LIBS / "*")


def java() -> str:
    path = shutil.which("java")
    if path is None:
        raise FileNotFoundError("java not found: the Kafka broker needs Java 17 (apt-get install openjdk-17-jdk)")
    return path


def server_properties(settings: Settings) -> str:
    """The broker's configuration: a single node, so every internal topic has one replica."""
    kafka = settings.kafka
    port, controller = broker_port(settings), kafka.local_controller_port
    listeners = {"PLAINTEXT": f"127.0.0.1:{port}"}
    advertised = dict(listeners)
    if kafka.local_edge_port:  # the edge's own listener, advertised where the edge reaches it (maybe a proxy)
        listeners["EDGE"] = f"127.0.0.1:{kafka.local_edge_port}"
        advertised["EDGE"] = settings.edge.kafka_bootstrap_servers or listeners["EDGE"]
    protocols = {name: "PLAINTEXT" for name in ("CONTROLLER", *listeners)}
    props = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        # A static quorum of this one node: the controller's address comes from here at every start, so a
        # changed port needs no re-format (a dynamic quorum would keep the old address in its log).
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller}",
        "listeners": ",".join(f"{n}://{a}" for n, a in listeners.items()) + f",CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": ",".join(f"{n}://{a}" for n, a in advertised.items()),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in protocols.items()),
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": log_dir(settings),
        "num.partitions": kafka.partitions,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "log.retention.ms": kafka.retention_ms,
        # Topics are created by Vigil with their partitions and retention (connectors.kafka.ensure_topics);
        # a misspelt topic name must fail, not appear.
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 10,
        # At least the Flink sinks' transaction timeout (kafka.transaction_timeout_ms).
        "transaction.max.timeout.ms": max(15 * 60 * 1000, kafka.transaction_timeout_ms),
        "group.initial.rebalance.delay.ms": 0,
        "group.min.session.timeout.ms": min(6000, kafka.session_timeout_ms),
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def render_config(settings: Settings) -> Path:
    config = broker_dir(settings) / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "server.properties").write_text(server_properties(settings))
    (config / "log4j2.xml").write_text(LOG4J2_XML)
    return config


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes them; never one starting with "-", which the storage tool's argument
    parser would take for an option (Kafka's own Uuid.randomUuid skips those too)."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return cluster_id


def format_storage(settings: Settings) -> None:
    """Format the log directory once (a new cluster id); a formatted one is kept as it is."""
    target = log_dir(settings)
    if (target / "meta.properties").is_file():
        return
    config = render_config(settings)
    cluster_id = new_cluster_id()
    cmd = [
        java(),
        f"-Dlog4j2.configurationFile={config / 'log4j2.xml'}",
        "-cp",
        classpath(),
        STORAGE_TOOL,
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(config / "server.properties"),
        "--feature",
        "transaction.version=2",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"formatting the Kafka log in {target} failed:\n{result.stdout}{result.stderr}")


def prepare(settings: Settings) -> None:
    render_config(settings)
    format_storage(settings)


def broker_spec(settings: Settings) -> ServiceSpec:
    config = broker_dir(settings) / "config"
    return ServiceSpec(
        "kafka",
        [
            java(),
            f"-Xms{settings.kafka.local_heap_mb}m",
            f"-Xmx{settings.kafka.local_heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={config / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={settings.logs_dir}",
            "-cp",
            classpath(),
            MAIN_CLASS,
            str(config / "server.properties"),
        ],
        broker_port(settings),
        start_timeout_s=90.0,
        description=f"Apache Kafka broker (KRaft, log in {log_dir(settings)})",
        prepare=lambda: prepare(settings),
    )
