"""Window statistics job: raw telemetry -> 5-s tumbling windows per machine and sensor.

Reads the telemetry topic with event time and watermarks, computes count/avg/stddev/min/max
entirely in the JVM (no per-record Python), writes one record per (machine, sensor, window) to
the window-stats topic that feeds the hot path (Pushgateway) and the cold path (ClickHouse), and
sends records that arrive after their window closed to the dead-letter topic.

Run it in-process (PyFlink local mode):      python -m jobs.window_stats
or on a standalone cluster with flink run:    vigil job submit window-stats --target cluster
"""

from __future__ import annotations

import argparse

from pyflink.table import TableEnvironment

from jobs.flink_env import create_table_env, execute, render_sql, statement_set_of
from vigil.logs import setup_logging
from vigil.settings import Settings, get_settings

JOB_NAME = "vigil-window-stats"
DDL = (
    "functions",
    "telemetry_source",
    "window_stats_sink",
    "dead_letter_sink",
    "classify_lateness",
    "samples_on_time",
    "window_stats_windows",
)
INSERTS = ("window_stats", "late_records")


def statements(settings: Settings) -> tuple[list[str], list[str]]:
    """The job as SQL: DDL (functions, tables, views) and the INSERTs that run together."""
    return [render_sql(name, settings) for name in DDL], [render_sql(name, settings) for name in INSERTS]


def build(env: TableEnvironment, settings: Settings):
    """Register tables and views, and return the statement set holding both INSERTs."""
    ddl, inserts = statements(settings)
    return statement_set_of(env, ddl, inserts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-resume", action="store_true", help="ignore retained checkpoints")
    parser.add_argument("--explain", action="store_true", help="print the optimized plan and exit")
    args, _ = parser.parse_known_args(argv)
    setup_logging()
    settings = get_settings()
    ddl, inserts = statements(settings)
    env = create_table_env(settings, JOB_NAME, ddl + inserts, resume=not args.no_resume)
    statement_set = statement_set_of(env, ddl, inserts)  # exactly the SQL the checkpoints are keyed by
    if args.explain:
        print(statement_set.explain())
        return
    execute(env, statement_set, JOB_NAME)


if __name__ == "__main__":
    main()
