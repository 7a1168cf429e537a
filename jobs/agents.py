"""Agents job: anomaly verdicts -> episodes -> diagnosis, root cause, maintenance (and plug-in) insights.

Reads the anomalies topic (what the anomaly-scoring job decided per machine and window), merges each
machine's anomalous windows into episodes with a Flink session window (sql/flink/agents_episodes.sql), and
runs every agent on each closed episode -- and, once an episode has ``agents.early_windows`` anomalous
windows, on the episode as it stands (sql/flink/agents_open_*.sql, then agents.sql for open episodes: a
preliminary analysis the closed one replaces) -- in a Python table function (udfs/agents_udtf.py) that reads the
episode's evidence from ClickHouse. Insights go to the insights topic; the ClickHouse sink stores them in
the insights table for the console.

Run it in-process (PyFlink local mode):      python -m jobs.agents
or on a standalone cluster with flink run:    vigil job submit agents --target cluster
"""

from __future__ import annotations

import argparse

from pyflink.table import TableEnvironment

from jobs.flink_env import (
    create_table_env,
    execute,
    kafka_sink_options,
    kafka_source_options,
    render_sql,
    statement_set_of,
)
from udfs.agents_udtf import NAME as AGENTS_FUNCTION
from udfs.agents_udtf import RESULT_FIELDS, run_agents_udtf
from vigil.logs import setup_logging
from vigil.settings import Settings, get_settings

JOB_NAME = "vigil-agents"
DDL = ("agents_source", "agents_flagged", "agents_episodes", "agents_sink")
OPEN_DDL = ("agents_open_marked", "agents_open_numbered", "agents_open_episodes")  # preliminary analyses


def statements(settings: Settings) -> tuple[list[str], list[str]]:
    """The job as SQL: DDL (tables, views) and its INSERT."""
    agents, size_ms = settings.agents, settings.window.size_ms
    params: dict[str, object] = {
        "anomalies_source_options": kafka_source_options(
            settings, settings.kafka.anomalies_topic, agents.consumer_group
        ),
        "insights_sink_options": kafka_sink_options(
            settings, settings.kafka.insights_topic, f"{agents.consumer_group}-insights"
        ),
        "agents_watermark_delay_s": f"{(size_ms + 1) / 1000:.3f}",
        # starts (gap_windows + 1) windows apart still join: the gap must exceed that by a millisecond
        "session_gap_s": f"{((agents.gap_windows + 1) * size_ms + 1) / 1000:.3f}",
        "gap_windows": agents.gap_windows,
        "episode_gap_ms": (agents.gap_windows + 1) * size_ms,
        "early_windows": agents.early_windows,
    }
    early = agents.early_windows > 0
    ddl = [render_sql(name, settings, **params) for name in (*DDL, *(OPEN_DDL if early else ()))]
    runs = [("episodes", "TRUE"), *((("open_episodes", "FALSE"),) if early else ())]  # closed, then preliminary
    inserts = [render_sql("agents", settings, **params, episodes_view=view, closed=closed) for view, closed in runs]
    return ddl, inserts


def udf_signature() -> str:
    """The table function's part of the plan fingerprint: its result row."""
    return f"-- python table function {AGENTS_FUNCTION} RETURNS {[name for name, _ in RESULT_FIELDS]}"


# The open-episode OVER aggregates keep an accumulator per (machine, episode) that no timer clears: state of
# episodes idle this long is dropped (window TVFs -- the closed episodes -- clear their own state anyway).
STATE_TTL = "1 d"


def build(env: TableEnvironment, settings: Settings):
    """Register RUN_AGENTS, run the DDL and return the statement set holding the INSERTs."""
    env.get_config().set("table.exec.state.ttl", STATE_TTL)
    env.create_temporary_system_function(AGENTS_FUNCTION, run_agents_udtf(settings))
    return statement_set_of(env, *statements(settings))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-resume", action="store_true", help="ignore retained checkpoints")
    parser.add_argument("--print-sql", action="store_true", help="print the rendered SQL and exit")
    args, _ = parser.parse_known_args(argv)
    setup_logging()
    settings = get_settings()
    ddl, inserts = statements(settings)
    if args.print_sql:
        print(";\n\n".join(ddl + inserts) + ";")
        return
    env = create_table_env(
        settings,
        JOB_NAME,
        [*ddl, *inserts, udf_signature()],
        resume=not args.no_resume,
        rest_port=settings.agents.rest_port,
    )
    execute(env, build(env, settings), JOB_NAME)


if __name__ == "__main__":
    main()
