"""Window statistics job: raw telemetry -> 5-s tumbling windows per machine and sensor.

Reads the telemetry topic with event time and watermarks, computes count/avg/stddev/min/max
entirely in the JVM (no per-record Python), writes one record per (machine, sensor, window) to
the window-stats topic that feeds the hot path (Pushgateway) and the cold path (ClickHouse), and
sends records that arrive after their window closed to the dead-letter topic. Its statements are
sql/flink/window_stats/, in file order.

Run it in-process (PyFlink local mode):      python -m jobs.window_stats
or on a standalone cluster with flink run:    vigil job submit window-stats --target cluster
"""

from __future__ import annotations

from collections.abc import Mapping

from pyflink.table import TableEnvironment

from jobs.flink_env import JobSql, never_idle, sql_templates
from jobs.registry import FLINK_JOBS
from jobs.spec import FlinkJob
from vigil.rules import RulesConfig
from vigil.settings import Settings

ENTRY = FLINK_JOBS["window-stats"]


def window_stats_sql(settings: Settings, rules: RulesConfig | None, overrides: Mapping[str, object]) -> JobSql:
    sql = JobSql()
    for template in sql_templates(ENTRY.sql_folder):
        sql.add(template, settings, **overrides)
    return sql


def prepare(env: TableEnvironment, settings: Settings, rules: RulesConfig | None) -> None:
    """With the edge's progress markers on every partition, the telemetry source is never idle."""
    if settings.edge.progress_interval_ms:
        never_idle(env)


JOB = FlinkJob(ENTRY, window_stats_sql, prepare=prepare)

if __name__ == "__main__":
    JOB.main()
