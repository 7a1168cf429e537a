"""One typed settings object for every Vigil process.

Sources, highest priority first: explicit keyword arguments, environment variables
(``VIGIL_`` prefix, ``__`` between nesting levels, e.g. ``VIGIL_KAFKA__BOOTSTRAP_SERVERS``),
a TOML file (``VIGIL_CONFIG`` or ``./vigil.toml``), then the defaults below. Child
processes (Flink job, edge service, sinks) receive the parent's settings through
:meth:`Settings.to_env`, so a test that starts a stack on free ports hands the same
ports to everything it launches.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Java artifacts fetched from Maven Central by scripts/setup.sh, one folder per scripts/java/<name>/pom.xml.
JAVA_LIBS_DIR = PROJECT_ROOT / ".venv" / "java"
ENV_PREFIX = "VIGIL_"
# Vigil's components as ClickHouse identities (their rights: connectors/clickhouse_access.py).
CLICKHOUSE_IDENTITIES = ("admin", "sink", "relay", "agents", "console", "api")
# Vigil's components as Kafka principals (their ACLs: operations/stack/kafka_security.py). "broker" is the local
# broker's own inter-broker identity; "admin" creates topics, users and ACLs and is what the tools connect as.
KAFKA_IDENTITIES = ("admin", "broker", "edge", "flink", "sinks", "alerting", "monitor")
ENV_NESTED = "__"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def every_identity(names: dict[str, str], identities: tuple[str, ...], prefix: str, system: str) -> dict[str, str]:
    """A name for each of ``identities``: the given one, else ``prefix`` + identity; unknown ones are an error."""
    unknown = sorted(set(names) - set(identities))
    if unknown:
        raise ValueError(f"unknown {system} identities {unknown}; they are {', '.join(identities)}")
    return {name: names.get(name, f"{prefix}{name}") for name in identities}


class KafkaSettings(BaseModel):
    """Broker connection and topic layout: the local Apache Kafka broker, or a real cluster with SASL/TLS."""

    bootstrap_servers: str = "127.0.0.1:19092"
    # SASL/SCRAM over TLS 1.3 by default, as the local broker runs (operations/stack/kafka_broker.py): each
    # component connects as its own principal (``principals``; password in <secrets_dir>/<identity>.password,
    # created by the stack, mode 600) and the broker's ACLs give it exactly the topics it reads or writes.
    # A cluster of your own: its protocol and mechanism here, and either one identity for every component
    # (sasl_username / sasl_password) or its principals' names and a secrets_dir holding their passwords.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "SASL_SSL"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    principals: dict[str, str] = Field(default_factory=lambda: {name: f"vigil-{name}" for name in KAFKA_IDENTITIES})
    # Default: <data_dir>/secrets/kafka (filled in by Settings).
    secrets_dir: Path | None = None
    # Which principal this connection is (:meth:`as_identity`); a client without one is refused on SASL.
    identity: str | None = None
    # The CA that signed the brokers' certificates; default (filled in by Settings): the local CA.
    ssl_ca_location: str | None = None
    telemetry_topic: str = "vigil.telemetry"
    window_stats_topic: str = "vigil.window-stats"
    dead_letter_topic: str = "vigil.dead-letter"
    # Windows that break a stateful rule or a model (detector, rules fired, severity), one record each.
    anomalies_topic: str = "vigil.anomalies"
    # What the agents concluded about anomaly episodes (diagnosis, root cause, maintenance, plug-ins).
    insights_topic: str = "vigil.insights"
    partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)
    retention_ms: int = 7 * 24 * 3600 * 1000
    # Rejected and late records are kept by size as well as by time: a flood of bad input cannot fill the disk.
    dead_letter_retention_bytes: int = Field(1024**3, ge=1024**2)  # per partition
    # Short group timeouts: a restarted sink rejoins its group within seconds instead of ~45 s.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 500
    # The Flink Kafka sinks write in transactions committed at each checkpoint; consumers read committed
    # records only. at-least-once is for a cluster without transactions (the sinks de-duplicate by key).
    flink_delivery_guarantee: Literal["at-least-once", "exactly-once"] = "exactly-once"
    # A Flink sink's transaction stays open from one checkpoint to the next, and through a restart until the
    # job recovers it: longer than checkpoint interval + recovery, at most the broker's transaction.max.timeout.ms.
    transaction_timeout_ms: int = Field(10 * 60 * 1000, ge=10_000)
    extra: dict[str, str] = Field(default_factory=dict, description="extra librdkafka / Java client properties")
    # The local broker started by `vigil stack up` (operations/stack/kafka_broker.py): its KRaft controller
    # port (the broker's port is bootstrap_servers') and JVM heap.
    local_controller_port: int = 19094
    local_heap_mb: int = Field(768, ge=256)
    # A listener of its own for the edge service (0: none, the edge uses the broker's one), advertised at
    # edge.kafka_bootstrap_servers: `vigil chaos` puts its fault proxy in between to cut the edge off.
    local_edge_port: int = 0

    @field_validator("principals")
    @classmethod
    def _every_principal(cls, principals: dict[str, str]) -> dict[str, str]:
        return every_identity(principals, KAFKA_IDENTITIES, "vigil-", "Kafka")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL") and self.sasl_mechanism is not None

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def as_identity(self, identity: str) -> KafkaSettings:
        """This connection as one of Vigil's principals (``KAFKA_IDENTITIES``)."""
        if identity not in KAFKA_IDENTITIES:
            raise ValueError(f"unknown Kafka identity {identity!r}; they are {', '.join(KAFKA_IDENTITIES)}")
        return self.model_copy(update={"identity": identity})

    def password_file(self, identity: str) -> Path:
        base = self.secrets_dir or (PROJECT_ROOT / ".vigil" / "secrets" / "kafka")
        return base / f"{identity}.password"

    def credentials(self) -> tuple[str, str]:
        """(user name, password) of this connection: the one configured identity, else the chosen principal's."""
        if self.sasl_username is not None:
            return self.sasl_username, self.sasl_password.get_secret_value() if self.sasl_password else ""
        if self.identity is None:
            raise ValueError(
                "a Kafka client without an identity: the caller must pick its principal "
                "(settings.kafka.as_identity(...)), or configure kafka.sasl_username for a cluster of your own"
            )
        path = self.password_file(self.identity)
        try:
            password = path.read_text().strip()
        except FileNotFoundError:
            raise ValueError(
                f"no Kafka password for {self.principals[self.identity]!r} at {path}: `vigil stack up` creates the "
                "local broker's; for a cluster of your own, put the principal's password there or set "
                "VIGIL_KAFKA__SASL_USERNAME and VIGIL_KAFKA__SASL_PASSWORD"
            ) from None
        return self.principals[self.identity], password

    def client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) configuration shared by producers, consumers and admin."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.uses_sasl:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"], conf["sasl.password"] = self.credentials()
        if self.uses_tls and self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.extra)
        return conf

    def java_properties(self, shaded_prefix: str = "") -> dict[str, str]:
        """The same connection for the Java Kafka client inside Flink (``properties.*`` of the connector).

        ``shaded_prefix``: where the connector jar relocated kafka-clients (the JAAS login module is named by
        class, and flink-sql-connector-kafka's is ``org.apache.flink.kafka.shaded.org.apache.kafka...``)."""
        props = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.uses_sasl:
            module = shaded_prefix + (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if self.sasl_mechanism == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            username, password = self.credentials()
            props["sasl.mechanism"] = str(self.sasl_mechanism)
            props["sasl.jaas.config"] = f'{module} required username="{username}" password="{password}";'
        if self.uses_tls and self.ssl_ca_location:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = self.ssl_ca_location
        props.update(self.extra)
        return props


class EdgeSettings(BaseModel):
    """gRPC ingestion service and the validation limits it enforces."""

    host: str = "127.0.0.1"
    port: int = 15051
    # Mutual TLS on the gRPC port: the edge shows tls_cert_file and takes only gateways whose certificate
    # tls_ca_file signed; the certificate's common name is the gateway's identity (what a batch's gateway_id is
    # replaced by, and what the registry's gateway_id column binds machines to). Unset files default to the
    # local stack's, under <data_dir>/certs (`vigil certs init`); a plant sets its own. Off only for a network
    # that authenticates gateways itself (a service mesh terminating mTLS in front of the edge).
    tls: bool = True
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # A gateway's own certificate and key (the gateway client's side), and the name it expects in the edge's.
    gateway_cert_file: Path | None = None
    gateway_key_file: Path | None = None
    # The edge's way to the brokers when it is not kafka.bootstrap_servers (a listener of its own, e.g. for a
    # DMZ, or a proxy in front of it); empty: kafka.bootstrap_servers.
    kafka_bootstrap_servers: str = ""
    max_workers: int = 16
    # Calls served or queued at once (beyond: RESOURCE_EXHAUSTED, the gateway buffers and retries), bytes one
    # stream may carry (a gateway's replay streams one 8-MiB buffer segment at a time), and rejections listed
    # in one acknowledgement (every one is counted and dead-lettered).
    max_concurrent_rpcs: int = Field(4096, ge=1)
    max_stream_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_ack_rejections: int = Field(100, ge=1)
    # Per gateway (its certificate identity; without TLS its claimed gateway_id): at most this many points per
    # second, averaged over gateway_rate_window_s (beyond: RESOURCE_EXHAUSTED, and the gateway buffers and
    # retries). Set it to ~10x a gateway's normal rate so a drain after an outage still runs fast; the local
    # stack's single local-gateway carries the whole simulator (1M points/s at 10,000 machines). Several edge
    # replicas share the counts through a `limits` storage URI (e.g. redis://host:6379).
    gateway_max_points_per_s: int = Field(2_000_000, ge=1)
    gateway_rate_window_s: int = Field(10, ge=1)
    gateway_rate_storage: str = "memory://"
    max_points_per_batch: int = Field(20_000, ge=1)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # A batch whose sequence is more than this past its machine's high-water mark is refused (dead-lettered):
    # taken, it would make every later real batch of the machine look like an acknowledged re-send, never
    # written. A gateway numbering its 5-s batches moves ~17,000 a day; this is about 58 days of them.
    max_sequence_jump: int = Field(1_000_000, ge=1)
    # How far ahead of the service clock a sample time or a batch's sent_at may be (after the gateway's clock is
    # corrected): at most the window's allowed lateness, or one client's future data could move event time past
    # everyone else's windows and have their data dead-lettered as late.
    max_future_skew_s: float = Field(2.0, ge=0)
    # A gateway whose clock is off the edge's by more than this (as the gateway measured it, beyond the
    # measurement's uncertainty) has its batches' times corrected by the error, in whole seconds; within it
    # nothing moves. Below the allowed lateness.
    clock_tolerance_ms: int = Field(1000, ge=0)
    # Gateways buffer up to an hour on disk through outages; accept a little more than that.
    max_past_age_s: float = Field(2 * 3600.0, ge=0)
    equipment_id_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
    # Optional registry (CSV with an equipment_id column): when set, unknown ids are rejected. Optional columns:
    # site and equipment_type (they replace what a batch claims), gateway_id (only that authenticated gateway
    # may report for the machine).
    equipment_registry: Path | None = None
    compression: Literal["gzip", "deflate", "none"] = "gzip"
    # Prometheus /metrics of the edge service (0 disables the HTTP endpoint).
    metrics_port: int = 15052
    # Where the gateway client keeps unsent batches while the edge service is unreachable.
    gateway_buffer_dir: Path | None = None
    gateway_buffer_max_age_s: float = 3600.0
    # gRPC deadline of one gateway send (stream) before it counts as unreachable and buffers.
    gateway_deadline_s: float = Field(30.0, gt=0)
    # Progress markers (edge/progress.py): this often the service writes, to every telemetry partition, the
    # time up to which EVERY machine heard from recently has sent its data (a gateway's sent_at is its promise).
    # Flink's watermark then closes a window as soon as the last machine's batch for it is in, instead of
    # waiting for the next batch to push event time past the allowed lateness. 0 disables the markers.
    # With several edge instances per topic, disable them (each instance knows only its own machines).
    progress_interval_ms: int = Field(250, ge=0)
    # With markers on they alone move the watermark: a machine replaying its buffer after an outage holds the
    # windows open. A machine silent for longer than this stops holding them; its later data for closed windows
    # is late (dead-lettered). Every ms a slow machine holds the fleet is a ms of alert latency for all.
    progress_active_ms: int = Field(12_000, ge=1000)
    # After a restart, each machine the previous run was serving holds the windows at its last promise until it
    # reports again or this long has passed: its buffered batches may be queued behind every other gateway's
    # replay (edge/state.py). Longer than the drain's queue (1,000 replays on max_workers took ~60 s here).
    progress_return_grace_ms: int = Field(120_000, ge=0)
    # Where the service snapshots its marks and its machines' promises (default <data_dir>/edge).
    state_dir: Path | None = None


class WindowSettings(BaseModel):
    """Event-time tumbling windows computed by the Flink job."""

    size_ms: int = Field(5000, ge=100)
    # Without the edge's progress markers (edge.progress_interval_ms = 0): the bounded out-of-orderness of the
    # watermark, how much later than the newest record of its Kafka partition a machine's data may arrive
    # before its window has closed; later records are dead-lettered. Every ms here is a ms of alert latency.
    allowed_lateness_ms: int = Field(3_000, ge=0)
    # A source partition silent this long stops holding its job's watermark. Only for sources without progress
    # markers (the agents job; telemetry with the edge's markers off): jobs.flink_env.never_idle says why.
    source_idle_timeout_ms: int = Field(15_000, ge=0)


class FlinkSettings(BaseModel):
    """How ``vigil job submit`` runs jobs."""

    # Where a job runs: in this process (PyFlink local mode) or on the standalone cluster (flink run).
    target: Literal["local", "cluster"] = "local"
    # How the stack runs the jobs: "split" = window-stats job -> topic -> anomaly-scoring job (each restarts
    # alone); "combined" = jobs/fleet_pipeline.py, one job that scores each window at the watermark that
    # closed it, a window (5 s) sooner than the split pair (which must see the next window first).
    topology: Literal["split", "combined"] = "split"
    parallelism: int = Field(2, ge=1)
    checkpoint_interval_ms: int = Field(5000, ge=200)
    rest_port: int = 18081
    # The standalone cluster's JobManager RPC port (target "cluster"); apart from every job's REST port.
    rpc_port: int = 18091
    consumer_group: str = "vigil-window-stats"
    # Where the Java UDFs are compiled to (default <data_dir>/jars; see jobs.flink_jars).
    jars_dir: Path | None = None


class ScoringSettings(BaseModel):
    """The anomaly-scoring job (jobs/anomaly_scoring.py): rules + ONNX models -> one verdict per window."""

    # Kafka consumer group of the scoring job (reads the window-stats topic).
    consumer_group: str = "vigil-anomaly-scoring"
    # Detectors an installed package adds through the "vigil.detectors" entry points (detectors/__init__.py)
    # load only when named here: loading one runs its package's code in every job and tool.
    detector_plugin_allowlist: tuple[str, ...] = ()
    # Per equipment type and sensor limits, and each type's expected sensors (validated by vigil/rules.py).
    rules_path: Path = PROJECT_ROOT / "flink-conf" / "rules.yaml"
    # Windows of history a model sees (the current one included).
    history_windows: int = Field(5, ge=1, le=24)
    # A model alarms only when its score is above its threshold in this many consecutive windows (the
    # current one included): one noisy window is not an anomaly. Rules fire at once. Measured with
    # `vigil evaluate --dataset sim`: 2 windows cut model false alarms by 41 % for 4 % fewer fault windows.
    model_persistence_windows: int = Field(2, ge=1, le=12)
    # A sensor / machine with no data for this long is dead. Must fit inside the history span.
    dead_after_ms: int = Field(15_000, ge=1)
    # Windows a window-stats record may trail newer windows of its partition and still be scored
    # (0: a window is judged as soon as the next window reached every partition). Each one adds a
    # window of latency; later records go to the dead-letter topic (reason late_window_stats).
    out_of_order_windows: int = Field(0, ge=0, le=12)
    # A model's alarm threshold (`vigil train`, the demo, `vigil evaluate --dataset sim`): the score a healthy
    # machine's window passes about this often per hour, extrapolated from the tail of held-out normal scores
    # (detectors/calibration.py). The alert policy's persistence and page_min_score sit on top of it.
    alarm_rate_per_machine_hour: float = Field(0.1, gt=0, le=100)
    # A model score this many times its threshold is critical by itself.
    critical_ratio: float = Field(2.0, gt=1.0)
    # How often each worker re-reads the model registry's live pointers (hot swap).
    model_poll_s: float = Field(5.0, gt=0)
    onnx_threads: int = Field(1, ge=1)
    # Where the job reads models (default: <data_dir>/models, where `vigil train` writes them).
    models_dir: Path | None = None
    # REST/web UI port of the job's own in-process MiniCluster (local target).
    rest_port: int = 18082

    @property
    def hop_windows(self) -> int:
        """Windows per machine the HOP window holds: the history of the oldest window persistence looks at."""
        return self.history_windows + self.model_persistence_windows - 1


class AgentsSettings(BaseModel):
    """The agents job (jobs/agents.py): anomaly episodes -> diagnostic, root-cause, maintenance insights."""

    consumer_group: str = "vigil-agents"
    rest_port: int = 18083
    # Anomalous windows at most this many windows apart are one episode (a Flink session window); an
    # episode is analysed once this many windows passed without a new anomalous window.
    gap_windows: int = Field(2, ge=0, le=120)
    # An episode still going on is analysed once it has this many anomalous windows (a preliminary
    # insight, replaced by the closed episode's); 0: only closed episodes are analysed.
    early_windows: int = Field(3, ge=0, le=1000)
    # Window statistics before the episode that say what "normal" was (read from ClickHouse).
    baseline_windows: int = Field(60, ge=4, le=2000)
    # Also run agents installed through the "vigil.agents" entry points (agents/registry.py), but only those
    # named here: loading a plug-in runs its package's code, so installing a package is not consent to run it.
    plugins: bool = True
    plugin_allowlist: tuple[str, ...] = ("compliance",)


class ClickHouseSettings(BaseModel):
    """Cold path. Points at the local chDB-backed server by default, or at any real ClickHouse."""

    host: str = "127.0.0.1"
    port: int = 18123
    # Each component connects as its own least-privilege identity (connectors/clickhouse_access.py): this maps
    # an identity to its ClickHouse user name; its password is read from <secrets_dir>/<identity>.password
    # (mode 600; the local server creates missing ones at its first start). Never in settings, env or URLs.
    users: dict[str, str] = Field(default_factory=lambda: {name: f"vigil_{name}" for name in CLICKHOUSE_IDENTITIES})
    # Default: <data_dir>/secrets/clickhouse (filled in by Settings).
    secrets_dir: Path | None = None
    database: str = "vigil"
    secure: bool = False
    window_ttl_days: int = Field(400, ge=1)
    raw_ttl_days: int = Field(30, ge=1)
    insert_batch_rows: int = Field(50_000, ge=1)
    flush_interval_s: float = Field(0.5, gt=0)
    # Kafka consumer group of the window-stats -> ClickHouse sink (its committed offsets = what is stored).
    sink_consumer_group: str = "vigil-clickhouse-sink"
    # Verdicts of the anomaly-scoring job (sql/clickhouse/002_anomalies.sql) and the view with exactly
    # one row per (equipment_id, window_start) that readers should query.
    anomalies_table: str = "anomalies"
    anomalies_view: str = "anomalies_latest"
    # The agents' insights (sql/clickhouse/005_insights.sql), one row per (episode, agent, kind).
    insights_table: str = "insights"
    # Known faults (simulator ground truth, maintenance work orders): what `vigil train --agents --source
    # clickhouse` labels episodes with (sql/clickhouse/006_fault_labels.sql, `vigil labels import`).
    fault_labels_table: str = "fault_labels"
    # The notification relay's delivery log (sql/clickhouse/003_alert_deliveries.sql).
    deliveries_table: str = "alert_deliveries"

    @field_validator("users")
    @classmethod
    def _every_identity(cls, users: dict[str, str]) -> dict[str, str]:
        return every_identity(users, CLICKHOUSE_IDENTITIES, "vigil_", "ClickHouse")

    def user(self, identity: str) -> str:
        try:
            return self.users[identity]
        except KeyError:
            raise ValueError(f"no ClickHouse user configured for identity {identity!r} (clickhouse.users)") from None

    def password_file(self, identity: str) -> Path:
        base = self.secrets_dir or (PROJECT_ROOT / ".vigil" / "secrets" / "clickhouse")
        return base / f"{identity}.password"


class PrometheusSettings(BaseModel):
    """Hot path servers: Pushgateway, Prometheus and Alertmanager."""

    host: str = "127.0.0.1"
    prometheus_port: int = 19090
    pushgateway_port: int = 19091
    alertmanager_port: int = 19093
    scrape_interval_s: int = Field(5, ge=1)
    push_interval_s: float = Field(5.0, gt=0)
    # Window statistics exported as gauges. Each adds one series per (machine, sensor):
    # at 10,000 machines x 10 sensors, two stats are already 200K series.
    exported_stats: list[Literal["avg", "stddev", "min", "max", "count"]] = ["avg", "stddev"]
    # A machine that has not reported for this long disappears from the Pushgateway
    # (it never expires series by itself); the dead-man alert fires long before.
    series_ttl_s: float = Field(900.0, gt=0)
    # Kafka consumer group of the Pushgateway sink (run one sink per group: each PUT replaces a site's group).
    sink_consumer_group: str = "vigil-pushgateway-sink"
    # Alertmanager's default receiver posts here (generic webhook); None = alerts are only shown, not sent.
    alert_webhook_url: str | None = None
    # VigilPipelineStalled fires when no machine has produced a newer window for this long.
    pipeline_stall_after_s: int = Field(60, ge=1)
    # Dead-man: VigilMachineSilent fires for a machine whose last window ended longer ago than this.
    machine_silent_after_s: int = Field(120, ge=1)
    # The silence and staleness rules hold off this long after Prometheus (re)starts: what it kept from before is
    # stale, and every source needs a moment to report again (flink-conf/prometheus/rules/vigil.rules.yml).
    startup_grace_s: int = Field(120, ge=0)
    # Prometheus TSDB retention (the cold path in ClickHouse keeps the long history).
    retention: str = "7d"
    # The three servers run with --web.config.file: TLS 1.3 and HTTP basic auth on every endpoint, so nobody who
    # reaches their ports reads the fleet's metrics, pushes a fake reading or silences an alert. The local stack's
    # CA signs their certificate (`vigil certs`); a real deployment points the three files at its own.
    tls: bool = True
    tls_cert_file: Path | None = None  # default <certs_dir>/monitoring.pem
    tls_key_file: Path | None = None  # default <certs_dir>/monitoring-key.pem
    tls_ca_file: Path | None = None  # what clients check the servers against; default the local CA
    basic_auth: bool = True
    username: str = "vigil"
    # Default <data_dir>/secrets/monitoring/<username>.password, created by the stack (random, 0600).
    password_file: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def pushgateway_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.pushgateway_port}"

    @property
    def prometheus_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.alertmanager_port}"


class AlertingSettings(BaseModel):
    """People-facing hot path: anomalies topic -> Alertmanager (v2 API) -> notification relay -> Slack / SMS /
    e-mail. Secrets come from the environment (``VIGIL_ALERTING__SLACK_WEBHOOK_URL``) or from files
    (``*_file``), never from the repo."""

    # -- alert publisher (jobs/alert_publisher.py): verdicts -> Alertmanager ------------------------
    publisher_consumer_group: str = "vigil-alert-publisher"
    # The scoring job's verdicts are committed with its checkpoints (exactly-once): read_committed would hold
    # every page until the next checkpoint completes (up to flink.checkpoint_interval_ms + its duration).
    # Uncommitted is safe for pages: a job that fails replays the same windows from its checkpoint, and the
    # publisher keeps only the first verdict of each (machine, window) (alerting/policy.py), Alertmanager keys
    # alerts by labels. The sinks that write the record of truth (ClickHouse) stay read_committed.
    publisher_isolation_level: Literal["read_committed", "read_uncommitted"] = "read_uncommitted"
    # endsAt of a firing alert is this far ahead; the publisher re-posts firing alerts before it passes,
    # so an alert whose publisher died resolves by itself instead of firing forever.
    alert_ttl_s: float = Field(300.0, gt=0)
    repost_interval_s: float = Field(60.0, gt=0)
    # Base of the console links in alert annotations (the equipment page is <console_url>/?equipment=<id>).
    console_url: str = "http://127.0.0.1:18501"
    # An incident (one per machine, alerting/policy.py) resolves after this many consecutive scored windows of
    # its machine without any anomaly: the hysteresis that keeps a fault hovering at its limit one page, not a
    # stream of firing/resolved pairs (12 windows = 1 minute).
    resolve_after_clear_windows: int = Field(12, ge=1)
    # Soft evidence (a model's score, the z-score, a jump) opens an incident only when the machine's verdicts were
    # anomalous in page_after_windows of its last page_within_windows windows; hard evidence (limits, stuck or
    # dead sensors, lost samples, a silent machine) opens one at once.
    page_after_windows: int = Field(3, ge=1)
    page_within_windows: int = Field(4, ge=1, le=63)
    # ... and only windows whose score (each detector's normalised to its limit: 1.0 = at it) reaches this count
    # towards it. Chosen on `vigil evaluate --dataset sim` seed 7 and checked on another seed (docs/detection.md).
    page_min_score: float = Field(1.5, ge=0.0)
    # Consumer-group lag, topic growth (dead letters) and sink health exported for the Prometheus rules.
    lag_poll_s: float = Field(5.0, gt=0)
    # -- Alertmanager timings (rendered into flink-conf/prometheus/alertmanager.yml) ------------------------
    group_wait_s: float = Field(1.0, ge=0)
    group_interval_s: float = Field(1.0, gt=0)  # <= the 5-s window: a storm stays one message per window
    repeat_interval: str = "4h"
    # -- notification relay (alerting/): Alertmanager webhook -> receivers --------------------------
    relay_host: str = "127.0.0.1"
    relay_port: int = 18090
    # SQLite file with the outbox, idempotency keys and dead letters (default <data_dir>/alerting/relay.db).
    state_path: Path | None = None
    # The webhook takes only Alertmanager's requests: a bearer token from this file (default
    # <data_dir>/alerting/webhook.token, created 0600 with a random token when missing), which Alertmanager sends
    # (its webhook_configs' http_config.authorization.credentials_file); bodies above webhook_max_bytes are refused.
    webhook_token_file: Path | None = None
    webhook_max_bytes: int = Field(1_048_576, ge=1024)
    # On-call routing: which receivers and recipients get which severity / site (validated on load).
    receivers_path: Path = PROJECT_ROOT / "flink-conf" / "alerting" / "receivers.yaml"
    slack_webhook_url: SecretStr | None = None
    slack_webhook_url_file: Path | None = None
    # Slack's Web API (chat.postMessage with a bot token) instead of incoming webhooks: one thread per machine's
    # incident (its first page opens it; resolution, diagnosis and re-fires are replies), which a webhook cannot
    # give (it does not return the message's ``ts``). Used whenever a bot token is set.
    slack_bot_token: SecretStr | None = None
    slack_bot_token_file: Path | None = None
    slack_api_url: str = "https://slack.com/api"
    # A machine's new alert within this long of its thread's last message is a reply in that thread (an
    # escalation is also shown in the channel); later, it opens a new thread.
    slack_thread_reuse_s: float = Field(1800.0, ge=0)
    # Twilio-compatible SMS API: POST <base>/2010-04-01/Accounts/<sid>/Messages.json
    sms_api_base_url: str = "https://api.twilio.com"
    sms_account_sid: str | None = None
    sms_auth_token: SecretStr | None = None
    sms_auth_token_file: Path | None = None
    sms_from: str | None = None
    # 2 GSM-7 segments; longer bodies are cut with an ellipsis.
    sms_max_chars: int = Field(306, ge=70, le=1600)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_password_file: Path | None = None
    smtp_starttls: bool = False
    email_from: str = "vigil@localhost"
    # Delivery retries: exponential backoff with full jitter, Retry-After honoured (capped at backoff_max_s).
    max_attempts: int = Field(6, ge=1)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    request_timeout_s: float = Field(5.0, gt=0)
    # Per-receiver rate limits (messages per minute, token bucket): what the providers allow by default,
    # Slack incoming webhooks 1 message/s, a Twilio long-code number 1 SMS segment/s.
    rate_limit_per_minute: dict[str, float] = Field(default_factory=lambda: {"slack": 60.0, "sms": 60.0, "email": 60.0})
    # Agents' diagnoses in alert messages, and follow-ups to whoever was paged before the diagnosis was known
    # (alerting/diagnoses.py): the relay reads the insights topic with this consumer group.
    insight_followups: bool = True
    insights_consumer_group: str = "vigil-notify-insights"
    # An alert starting within this long of an episode's first/last anomalous window belongs to the episode.
    diagnosis_margin_s: float = Field(60.0, ge=0)
    # Local stand-in for Slack, the SMS provider and an SMTP server (demo, tests, `vigil bench latency`): it
    # records every request it gets. With ``use_standin`` the local stack sends every channel that has no real
    # endpoint configured above (no Slack webhook, no SMS account, no SMTP host) to it; real ones always win.
    use_standin: bool = True
    standin_port: int = 18095
    standin_smtp_port: int = 18025

    @model_validator(mode="after")
    def _persistence_fits(self) -> AlertingSettings:
        if self.page_after_windows > self.page_within_windows:
            raise ValueError(
                f"alerting.page_after_windows ({self.page_after_windows}) must be <= alerting.page_within_windows "
                f"({self.page_within_windows}): an incident opens after k anomalous windows of the last n"
            )
        return self


class ConsoleSettings(BaseModel):
    """The Streamlit analyst console (streamlit_app/)."""

    host: str = "127.0.0.1"
    port: int = 18501
    # Local users: roles, sites, Argon2 password hashes (default <data_dir>/console/users.yaml); manage them
    # with `vigil console users`. With none at all, `vigil console` creates `admin` and prints its password.
    users_path: Path | None = None
    # OpenID Connect (Streamlit's st.login): when client_id is set, people sign in with the provider and
    # users_path maps their e-mail to a role and sites. The secret comes from the environment or a file.
    oidc_server_metadata_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_client_secret_file: Path | None = None
    # A password sign-in is remembered by the browser (a signed cookie) for this long, so new tabs and alert
    # links do not ask again; 0 = every tab signs in. Deleting <data_dir>/console/signin.key signs everyone out.
    remember_hours: float = Field(12.0, ge=0, le=24 * 30)
    # Failed password sign-ins taken per user name and per client address in a moving window; beyond either,
    # sign-ins are refused (the password unchecked) until the window moves on (streamlit_app/signin_throttle.py).
    signin_failures_per_user: int = Field(5, ge=1)
    signin_failures_per_address: int = Field(20, ge=1)
    signin_failure_window_s: int = Field(900, ge=1)
    # SQL workbench limits (ClickHouse enforces them: max_execution_time, max_result_rows).
    sql_timeout_s: float = Field(20.0, gt=0, le=60)  # at most the console identity's max_execution_time
    sql_max_rows: int = Field(10_000, ge=1, le=1_000_000)
    # Live pages re-read their data this often.
    refresh_s: float = Field(5.0, ge=1.0)
    # A machine's charts get at most this many points per sensor: longer ranges are aggregated (ClickHouse
    # GROUP BY, Prometheus *_over_time) into buckets keeping each one's mean and extremes, instead of shipping
    # every 5-s window (7 days: 120,960 per sensor). 240 points on the 720-px chart: the browser drew one hour
    # (8 sensors) in ~0.95 s instead of ~1.45 s with 720 (docs/benchmarks.md).
    chart_points: int = Field(240, ge=60, le=10_000)


class SimulatorSettings(BaseModel):
    """Fleet simulator defaults (overridable per run on the command line)."""

    machines: int = Field(1000, ge=1)
    sites: int = Field(4, ge=1)
    batch_interval_s: float = Field(5.0, gt=0)
    # Samples per sensor in each batch. 70 (14 Hz) makes 1,000 machines of 6-8 sensors carry the
    # design load of ~100K points/s; 10 (2 Hz) is a lighter layout (~14.5K/s) for small machines.
    samples_per_sensor: int = Field(70, ge=1)
    seed: int = 7
    fault_rate_per_machine_hour: float = Field(0.5, ge=0)
    # Which random faults the simulated fleet suffers (edge.simulator.faults.FAULT_MIXES): "plant" = bearing
    # wear, overheating, cavitation, electrical faults and sensor faults; "generic" = signal-level faults only
    # (what `vigil evaluate --dataset sim` measures detectors on).
    fault_mix: Literal["generic", "plant"] = "plant"
    ground_truth_path: Path | None = None
    # Concurrent gRPC streams the simulator opens to the edge service.
    streams: int = Field(8, ge=1)


class ChaosSettings(BaseModel):
    """`vigil chaos` (operations/chaos.py): its fault proxy (operations/stack/fault_proxy.py) and, unless
    kafka.local_edge_port and edge.kafka_bootstrap_servers say otherwise, the broker's listener for the edge
    behind it and the proxy's port the edge connects to."""

    proxy_api_port: int = 18474
    edge_listener_port: int = 19096
    edge_proxy_port: int = 19097
    # The kafka-disk-full fault fills the filesystem of the broker's data: a tmpfs of this size that vigil chaos
    # mounts at <data_dir>/kafka (as root, in a fresh data dir), so the machine's own disk is never filled.
    kafka_disk_mb: int = Field(1024, ge=64)


class Settings(BaseSettings):
    """Everything configurable in Vigil, in one place."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = PROJECT_ROOT / ".vigil"
    # The local stack's CA and certificates (`vigil certs init`); default <data_dir>/certs.
    tls_dir: Path | None = None
    kafka: KafkaSettings = KafkaSettings()
    edge: EdgeSettings = EdgeSettings()
    window: WindowSettings = WindowSettings()
    flink: FlinkSettings = FlinkSettings()
    scoring: ScoringSettings = ScoringSettings()
    agents: AgentsSettings = AgentsSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    console: ConsoleSettings = ConsoleSettings()
    alerting: AlertingSettings = AlertingSettings()
    chaos: ChaosSettings = ChaosSettings()

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _clickhouse_secrets_dir(self) -> Settings:
        if self.clickhouse.secrets_dir is None:  # a copy: the ClickHouseSettings passed in may be shared
            secrets_dir = self.data_dir / "secrets" / "clickhouse"
            self.clickhouse = self.clickhouse.model_copy(update={"secrets_dir": secrets_dir})
        return self

    @model_validator(mode="after")
    def _kafka_local_files(self) -> Settings:
        update: dict[str, Any] = {}
        if self.kafka.secrets_dir is None:
            update["secrets_dir"] = self.data_dir / "secrets" / "kafka"
        hosts = {server.rsplit(":", 1)[0] for server in self.kafka.bootstrap_servers.split(",")}
        if self.kafka.uses_tls and self.kafka.ssl_ca_location is None and hosts <= LOCAL_HOSTS:
            # The local broker's certificate is the local CA's; a cluster elsewhere keeps the system's trust.
            update["ssl_ca_location"] = str(self.certs_dir / "ca.pem")
        if update:  # a copy: the KafkaSettings passed in may be shared
            self.kafka = self.kafka.model_copy(update=update)
        return self

    @model_validator(mode="after")
    def _future_skew_below_lateness(self) -> Settings:
        if self.edge.max_future_skew_s * 1000 > self.window.allowed_lateness_ms:
            raise ValueError(
                f"edge.max_future_skew_s ({self.edge.max_future_skew_s:g} s) must not exceed "
                f"window.allowed_lateness_ms ({self.window.allowed_lateness_ms} ms): a gateway ahead by more could "
                "move event time past other machines' open windows and dead-letter their data as late"
            )
        return self

    @model_validator(mode="after")
    def _check_windows(self) -> Settings:
        if self.window.size_ms % 1000 and 1000 % self.window.size_ms:
            raise ValueError("window.size_ms must divide or be a multiple of 1000 ms")
        span = self.scoring.hop_windows * self.window.size_ms
        if not self.window.size_ms <= self.scoring.dead_after_ms < span:
            raise ValueError(
                f"scoring.dead_after_ms ({self.scoring.dead_after_ms}) must be at least one window "
                f"({self.window.size_ms} ms) and shorter than the history span "
                f"(scoring.hop_windows x window.size_ms = {span} ms): the job sees silence only inside it"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get(f"{ENV_PREFIX}CONFIG")
        path = Path(config) if config else Path.cwd() / "vigil.toml"
        if config and not path.is_file():
            raise FileNotFoundError(f"VIGIL_CONFIG points at {path}, which does not exist")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # -- paths derived from data_dir ---------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "flink" / "checkpoints"

    @property
    def jars_dir(self) -> Path:
        return self.flink.jars_dir or (self.data_dir / "jars")

    @property
    def edge_state_dir(self) -> Path:
        return self.edge.state_dir or (self.data_dir / "edge")

    @property
    def models_dir(self) -> Path:
        return self.scoring.models_dir or (self.data_dir / "models")

    @property
    def relay_token_path(self) -> Path:
        return self.alerting.webhook_token_file or (self.data_dir / "alerting" / "webhook.token")

    @property
    def alerting_state_path(self) -> Path:
        return self.alerting.state_path or (self.data_dir / "alerting" / "relay.db")

    @property
    def console_users_path(self) -> Path:
        return self.console.users_path or (self.data_dir / "console" / "users.yaml")

    @property
    def console_signin_key_path(self) -> Path:
        return self.data_dir / "console" / "signin.key"

    @property
    def ground_truth_path(self) -> Path:
        return self.simulator.ground_truth_path or (self.data_dir / "ground_truth.jsonl")

    @property
    def certs_dir(self) -> Path:
        """The local stack's CA and certificates (`vigil certs init`)."""
        return self.tls_dir or (self.data_dir / "certs")

    @property
    def monitoring_password_path(self) -> Path:
        """The basic-auth password of Prometheus, Alertmanager and the Pushgateway (``prometheus.username``)."""
        p = self.prometheus
        return p.password_file or (self.data_dir / "secrets" / "monitoring" / f"{p.username}.password")

    @property
    def monitoring_ca_path(self) -> Path:
        return self.prometheus.tls_ca_file or (self.certs_dir / "ca.pem")

    @property
    def monitoring_cert_path(self) -> Path:
        return self.prometheus.tls_cert_file or (self.certs_dir / "monitoring.pem")

    @property
    def monitoring_key_path(self) -> Path:
        return self.prometheus.tls_key_file or (self.certs_dir / "monitoring-key.pem")

    @property
    def kafka_keystore_path(self) -> Path:
        """The local Kafka broker's key and certificate (PEM, one file; issued by the local CA)."""
        return self.certs_dir / "kafka-keystore.pem"

    @property
    def gateway_buffer_dir(self) -> Path:
        return self.edge.gateway_buffer_dir or (self.data_dir / "gateway-buffer")

    def to_env(self) -> dict[str, str]:
        """Flatten into ``VIGIL_*`` variables so a child process rebuilds exactly these settings."""
        env: dict[str, str] = {}

        def walk(parts: tuple[str, ...], value: Any) -> None:
            if isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk((*parts, name), getattr(value, name))
                return
            if value is None:
                return
            key = ENV_PREFIX + ENV_NESTED.join(parts).upper()
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)

        walk((), self)
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (built once from env and config file)."""
    return Settings()
