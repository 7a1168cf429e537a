"""A streaming TableEnvironment configured the same way for every Vigil job.

Checkpointing (exactly-once, retained on cancel so a restarted job resumes its window state),
the Kafka connector jars (appended to ``pipeline.jars`` so flink-python's own jar stays), UTC
session time zone, and Kafka connection properties rendered from the one settings object.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, StatementSet, TableEnvironment

from jobs.flink_jars import UDF_SOURCES, job_jars
from vigil.contracts import MARKER_GATEWAY, WINDOW_STATS_MARKER_PREFIX
from vigil.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

SQL_DIR = PROJECT_ROOT / "sql" / "flink"
LOCAL_CONF = PROJECT_ROOT / "flink-conf" / "local" / "config.yaml"

# Milliseconds since the epoch at the moment a row is produced. Flink evaluates CURRENT_TIMESTAMP
# once per record, so both halves come from the same instant (TIMESTAMPDIFF in ms overflows INT).
NOW_MS_EXPR = (
    "(CAST(TIMESTAMPDIFF(SECOND, TO_TIMESTAMP_LTZ(0, 3), CURRENT_TIMESTAMP) AS BIGINT) * 1000"
    " + EXTRACT(MILLISECOND FROM CURRENT_TIMESTAMP))"
)


def plan_fingerprint(statements: list[str], functions: str = "") -> str:
    """Identity of a job's plan: its rendered SQL (comments aside), the Java UDF sources it calls and
    ``functions``, the signature of the Python functions it registers.

    Flink cannot restore window state written by a different plan (it fails on every restart
    with a StateMigrationException), so checkpoints are kept per fingerprint.
    """
    digest = hashlib.sha256()
    for statement in statements:
        digest.update(_without_comment_lines(statement).encode())
    digest.update(functions.encode())
    for source in sorted(UDF_SOURCES.rglob("*.java")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _without_comment_lines(statement: str) -> str:
    """Comments do not change a plan, so editing one must not cost a job its state; nor does a rotated
    Kafka password (and a fingerprint, which names a folder, must not depend on a secret)."""
    return "\n".join(
        line for line in statement.splitlines() if not line.lstrip().startswith(("--", "'properties.sasl.jaas.config'"))
    )


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` folder holding ``_metadata``), if any.

    A running job deletes its older checkpoints (``num-retained``) while this looks: one that is gone
    between the listing and its ``stat`` is skipped, not an error."""
    newest: tuple[float, Path] | None = None
    for meta in checkpoints_dir.rglob("chk-*/_metadata"):
        try:
            mtime = meta.parent.stat().st_mtime
        except FileNotFoundError:
            continue
        if newest is None or mtime > newest[0]:
            newest = (mtime, meta.parent)
    return newest[1] if newest else None


class LazySql:
    """A statement part rendered when a template uses it: the Kafka options read the flink principal's
    password, which a job built with other sources and sinks (tests, offline runs) never needs."""

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render

    def __format__(self, spec: str) -> str:
        return format(self._render(), spec)

    def __str__(self) -> str:
        return self._render()


# flink-sql-connector-kafka relocates kafka-clients here (jobs/flink_jars.py fetches that jar).
KAFKA_SHADED_PREFIX = "org.apache.flink.kafka.shaded."


def kafka_properties_sql(settings: Settings) -> str:
    """``'properties.x' = 'y',`` lines for a Kafka table's WITH clause."""
    lines = [
        f"'properties.{key}' = '{sql_escape(value)}',"
        for key, value in settings.kafka.as_identity("flink").java_properties(KAFKA_SHADED_PREFIX).items()
    ]
    return "\n    ".join(lines)


def kafka_source_options(settings: Settings, topic: str, group: str) -> LazySql:
    """WITH options of a JSON Kafka source, resuming from the job's committed offsets (earliest at first)."""
    return LazySql(lambda: _kafka_source_options(settings, topic, group))


def _kafka_source_options(settings: Settings, topic: str, group: str) -> str:
    kafka = settings.kafka
    return f"""'connector' = 'kafka',
    'topic' = '{sql_escape(topic)}',
    {kafka_properties_sql(settings)}
    'properties.group.id' = '{sql_escape(group)}',
    'properties.auto.offset.reset' = 'earliest',
    'properties.session.timeout.ms' = '{kafka.session_timeout_ms}',
    'properties.heartbeat.interval.ms' = '{kafka.heartbeat_interval_ms}',
    'properties.isolation.level' = 'read_committed',
    'scan.startup.mode' = 'group-offsets',
    'format' = 'json',
    'json.fail-on-missing-field' = 'false',
    'json.ignore-parse-errors' = 'false'"""


def kafka_sink_options(settings: Settings, topic: str, transactional_id_prefix: str) -> LazySql:
    """WITH options of a JSON Kafka sink keyed by equipment id."""
    return LazySql(lambda: _kafka_sink_options(settings, topic, transactional_id_prefix))


def _kafka_sink_options(settings: Settings, topic: str, transactional_id_prefix: str) -> str:
    return f"""'connector' = 'kafka',
    'topic' = '{sql_escape(topic)}',
    {kafka_properties_sql(settings)}
    'key.format' = 'raw',
    'key.fields' = 'equipment_id',
    'value.format' = 'json',
    'value.fields-include' = 'ALL',
    'sink.delivery-guarantee' = '{settings.kafka.flink_delivery_guarantee}',
    'sink.transactional-id-prefix' = '{sql_escape(transactional_id_prefix)}',
    'properties.transaction.timeout.ms' = '{settings.kafka.transaction_timeout_ms}'"""


KAFKA_METADATA_COLUMNS = """kafka_partition INT METADATA FROM 'partition' VIRTUAL,
    kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,"""


def telemetry_watermark(settings: Settings) -> str:
    """The telemetry source's watermark: the edge's progress markers alone when it writes them, else the data.

    A data row's NULL means "no watermark from this row" to Flink's generator (edge/progress.py says why).
    """
    delayed = f"rowtime - INTERVAL '{_seconds(settings.window.allowed_lateness_ms)}' SECOND"
    if not settings.edge.progress_interval_ms:
        return delayed
    return f"CASE WHEN gateway_id = '{MARKER_GATEWAY}' THEN {delayed} END"


IDLE_TIMEOUT = "table.exec.source.idle-timeout"


def never_idle(env: TableEnvironment) -> None:
    """Sources whose every partition carries progress markers: no partition is ever declared idle.

    An idle partition stops holding the watermark back; when it wakes up (after an outage every partition
    falls silent together, and they wake one by one) the first ones back move the watermark past the
    others' pending records, which the window operators then drop. Markers keep each partition's own
    watermark moving instead, so idleness is only needed where there are none.
    """
    env.get_config().set(IDLE_TIMEOUT, "0 ms")


def sql_params(settings: Settings) -> dict[str, object]:
    """Template values every job's SQL may use, from the settings (the only source of names)."""
    window = settings.window
    group = settings.flink.consumer_group
    return {
        "source_options": kafka_source_options(settings, settings.kafka.telemetry_topic, group),
        "source_metadata_columns": KAFKA_METADATA_COLUMNS,
        "window_stats_sink_options": kafka_sink_options(
            settings, settings.kafka.window_stats_topic, f"{group}-window-stats"
        ),
        "dead_letter_sink_options": kafka_sink_options(settings, settings.kafka.dead_letter_topic, f"{group}-late"),
        "window_size_ms": window.size_ms,
        "window_size_s": _seconds(window.size_ms),
        "lateness_s": _seconds(window.allowed_lateness_ms),
        "telemetry_watermark": telemetry_watermark(settings),
        "window_stats_marker_prefix": WINDOW_STATS_MARKER_PREFIX,
        "window_stats_partitions": settings.kafka.partitions,
        # Sorted by window through one writer, for the scoring job's watermark (08_insert_window_stats.sql).
        "window_stats_order": "ORDER BY rowtime",
        "window_stats_writers": 1,
        "now_ms_expr": NOW_MS_EXPR,
    }


@dataclass(frozen=True)
class SqlTemplate:
    """One statement of a job: ``sql/flink/<job>/NN_<name>.sql``; NN orders the job's statements."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.stem.split("_", 1)[1]

    @property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def is_insert(self) -> bool:
        """INSERTs run together as the job's statement set; everything before them is DDL."""
        return _without_comment_lines(self.text).lstrip().upper().startswith("INSERT")

    def render(self, settings: Settings, **extra: object) -> str:
        return self.text.format(**(sql_params(settings) | extra))


def sql_templates(folder: str) -> list[SqlTemplate]:
    """A job's statements in the order its folder lists them."""
    paths = sorted((SQL_DIR / folder).glob("[0-9][0-9]_*.sql"))
    if not paths:
        raise FileNotFoundError(f"no SQL statements (NN_name.sql) in {SQL_DIR / folder}")
    return [SqlTemplate(path) for path in paths]


def sql_template(ref: str) -> SqlTemplate:
    """``"<job folder>/<name>"``: one statement by name, whatever its number."""
    folder, name = ref.split("/")
    found = [t for t in sql_templates(folder) if t.name == name]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one {SQL_DIR / folder}/NN_{name}.sql, found {len(found)}")
    return found[0]


def render_sql(ref: str, settings: Settings, **extra: object) -> str:
    """One statement (``"window_stats/telemetry_source"``) filled from the settings and ``extra``."""
    return sql_template(ref).render(settings, **extra)


@dataclass
class JobSql:
    """A job as SQL: DDL (functions, tables, views) and the INSERTs that run together as one job."""

    ddl: list[str] = field(default_factory=list)
    inserts: list[str] = field(default_factory=list)

    @property
    def statements(self) -> list[str]:
        return [*self.ddl, *self.inserts]

    def add(self, template: SqlTemplate, settings: Settings, **extra: object) -> None:
        (self.inserts if template.is_insert else self.ddl).append(template.render(settings, **extra))

    def __add__(self, other: JobSql) -> JobSql:
        return JobSql([*self.ddl, *other.ddl], [*self.inserts, *other.inserts])

    def script(self) -> str:
        return ";\n\n".join(self.statements) + ";"


def create_table_env(
    settings: Settings,
    job_name: str,
    statements: list[str],
    functions: str = "",
    resume: bool = True,
    rest_port: int | None = None,
) -> TableEnvironment:
    """A streaming environment whose checkpoints live under ``<checkpoints>/<job>/<plan fingerprint>``."""
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    checkpoints = settings.checkpoints_dir / job_name / plan_fingerprint(statements, functions)
    checkpoints.mkdir(parents=True, exist_ok=True)
    # Append, never overwrite: under `flink run` pipeline.jars already holds flink-python's jar.
    existing = Configuration.parse_list_value(config.get("pipeline.jars", ""))
    ours = [path.resolve().as_uri() for path in job_jars(settings.jars_dir)]
    jars = ";".join([*existing, *(uri for uri in ours if uri not in existing)])
    options: dict[str, str] = {}
    if settings.flink.target == "local":
        # In-process MiniCluster: take the repo's local profile and expose the REST API/web UI.
        options |= {key: str(value) for key, value in yaml.safe_load(LOCAL_CONF.read_text()).items()}
        options |= {
            "rest.port": str(rest_port or settings.flink.rest_port),
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
        }
    options |= {
        "pipeline.name": job_name,
        "pipeline.jars": jars,
        "parallelism.default": str(settings.flink.parallelism),
        "table.local-time-zone": "UTC",
        "execution.checkpointing.interval": f"{settings.flink.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": checkpoints.resolve().as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        "state.backend.type": "hashmap",
        IDLE_TIMEOUT: f"{settings.window.source_idle_timeout_ms} ms",
    }
    if resume and (checkpoint := latest_checkpoint(checkpoints)) is not None:
        log.info("resuming from checkpoint %s", checkpoint)
        options["execution.state-recovery.path"] = checkpoint.resolve().as_uri()
    elif resume and latest_checkpoint(settings.checkpoints_dir / job_name) is not None:
        log.warning(
            "the job's plan changed since its last checkpoint (SQL, settings or UDFs), so its window state "
            "cannot be restored: starting without state from the committed Kafka offsets. Windows that were "
            "open at the switch may be incomplete; older checkpoints stay in %s",
            settings.checkpoints_dir / job_name,
        )
    for key, value in options.items():
        config.set(key, value)
    return env


def statement_set_of(env: TableEnvironment, ddl: list[str], inserts: list[str]) -> StatementSet:
    """Run the DDL (functions, tables, views) and gather the INSERTs into one statement set: one job."""
    for statement in ddl:
        env.execute_sql(statement)
    statement_set = env.create_statement_set()
    for statement in inserts:
        statement_set.add_insert_sql(statement)
    return statement_set


def execute(env: TableEnvironment, statement_set: StatementSet, job_name: str) -> None:
    """Submit the job; in local mode and attached `flink run`, live as long as it does."""
    result = statement_set.execute()
    client = result.get_job_client()
    if client is not None:
        log.info("submitted %s as job %s", job_name, client.get_job_id())
    if env.get_config().get("execution.attached", "true").lower() != "false":
        result.wait()


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"


def sql_escape(value: str) -> str:
    """A value inside single quotes in Flink SQL."""
    return value.replace("'", "''")
