"""The local Apache Kafka broker: one KRaft node (broker and controller in one JVM), its log on disk.

The jars are Apache Kafka's own, from Maven Central (scripts/java/kafka-broker/pom.xml, fetched by
scripts/setup.sh). The log lives under ``<data_dir>/kafka/data`` and is formatted once, so topics,
committed offsets and open transactions survive a restart, and Flink's checkpointed offsets stay valid.
Transactions use ``transaction.version=2`` (KIP-890: a producer's epoch is bumped on every transaction,
so a zombie's late writes are fenced). Pointing at a real cluster is a setting (``kafka.bootstrap_servers``
and its security options); then none of this runs.

With ``kafka.security_protocol`` SASL_SSL (the default) the client listeners take SCRAM over TLS 1.3 only, with
the principals and ACLs of operations/stack/kafka_security.py and StandardAuthorizer denying the rest; the
controller listener takes TLS with a client certificate only (SCRAM credentials live in the metadata log the
controller serves, so they cannot authenticate to it), which only the broker's own certificate passes.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from operations.certs import ensure_local_certs, local_kafka_tls
from operations.stack import kafka_security
from operations.stack.process import ServiceSpec
from vigil.settings import JAVA_LIBS_DIR, Settings

BROKER_LIBS = JAVA_LIBS_DIR / "kafka-broker"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
NODE_ID = 1
SCRAM_MARKER = "scram-formatted"  # beside the log: it was formatted with the principals' SCRAM credentials

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
    listeners = {"CLIENT": f"127.0.0.1:{port}"}
    advertised = dict(listeners)
    if kafka.local_edge_port:  # the edge's own listener, advertised where the edge reaches it (maybe a proxy)
        listeners["EDGE"] = f"127.0.0.1:{kafka.local_edge_port}"
        advertised["EDGE"] = settings.edge.kafka_bootstrap_servers or listeners["EDGE"]
    client_protocol = kafka.security_protocol
    protocols = {"CONTROLLER": "SSL" if kafka.uses_tls else "PLAINTEXT"} | dict.fromkeys(listeners, client_protocol)
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
        "inter.broker.listener.name": "CLIENT",
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
        **security_properties(settings, list(listeners)),
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def security_properties(settings: Settings, client_listeners: list[str]) -> dict[str, object]:
    """TLS 1.3 on every listener, SCRAM on the client ones, mTLS on the controller's, ACLs on everything."""
    kafka = settings.kafka
    props: dict[str, object] = {}
    if kafka.uses_tls:
        if not local_kafka_tls(settings):
            raise ValueError(
                f"kafka.ssl_ca_location ({kafka.ssl_ca_location}) is not the local CA: the local broker's "
                "certificate comes from `vigil certs`; point kafka.bootstrap_servers at your own cluster instead"
            )
        props |= {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": settings.kafka_keystore_path,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": kafka.ssl_ca_location,
            "ssl.protocol": "TLSv1.3",
            "ssl.enabled.protocols": "TLSv1.3",
            "listener.name.controller.ssl.client.auth": "required",
            # A certificate's principal is its common name ("vigil-kafka", the broker's own).
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        }
    if kafka.uses_sasl:
        mechanism = str(kafka.sasl_mechanism)
        user, password = kafka.as_identity("broker").credentials()
        jaas = (
            f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'
        )
        props |= {
            "sasl.enabled.mechanisms": mechanism,
            "sasl.mechanism.inter.broker.protocol": mechanism,
            **{f"listener.name.{name.lower()}.{mechanism.lower()}.sasl.jaas.config": jaas for name in client_listeners},
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": ";".join(f"User:{u}" for u in [*kafka_security.super_users(settings), "vigil-kafka"]),
        }
    return props


def render_config(settings: Settings) -> Path:
    """server.properties (0600: it holds the broker's own SCRAM password) and the log configuration."""
    config = broker_dir(settings) / "config"
    config.mkdir(parents=True, exist_ok=True)
    path = config / "server.properties"
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(server_properties(settings))
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
    marker = broker_dir(settings) / SCRAM_MARKER
    if (target / "meta.properties").is_file():
        if settings.kafka.uses_sasl and not marker.is_file():
            raise RuntimeError(
                f"the Kafka log in {target} was formatted without SCRAM credentials (by a Vigil before Kafka "
                "security), so its broker cannot authenticate to itself: remove that folder for a fresh log (its "
                "topics and offsets are lost), or run this stack with VIGIL_KAFKA__SECURITY_PROTOCOL=PLAINTEXT"
            )
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
        *(kafka_security.scram_format_args(settings) if settings.kafka.uses_sasl else []),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        for password in kafka_security.credentials(settings).values():
            output = output.replace(password, "***")
        raise RuntimeError(f"formatting the Kafka log in {target} failed:\n{output}")
    if settings.kafka.uses_sasl:
        marker.write_text("the log holds every principal's SCRAM credential from its format\n")


def prepare(settings: Settings) -> None:
    if settings.kafka.uses_sasl:
        kafka_security.ensure_passwords(settings)
    if local_kafka_tls(settings):
        ensure_local_certs(settings)
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
