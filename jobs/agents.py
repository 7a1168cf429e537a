"""Agents job: anomaly verdicts -> episodes -> diagnosis, root cause, maintenance (and plug-in) insights.

Reads the anomalies topic (what the anomaly-scoring job decided per machine and window), merges each
machine's anomalous windows into episodes with a Flink session window (sql/flink/agents/03_episodes.sql), and
runs every agent on each closed episode -- and, once an episode has ``agents.early_windows`` anomalous
windows, on the episode as it stands (sql/flink/agents/*_open_*.sql, then the insert for open episodes: a
preliminary analysis the closed one replaces) -- in a Python table function (udfs/agents_udtf.py) that reads the
episode's evidence from ClickHouse. Insights go to the insights topic; the ClickHouse sink stores them in
the insights table for the console.

Run it in-process (PyFlink local mode):      python -m jobs.agents
or on a standalone cluster with flink run:    vigil job submit agents --target cluster
"""

from __future__ import annotations

from collections.abc import Mapping

from pyflink.table import TableEnvironment

from jobs.flink_env import JobSql, kafka_sink_options, kafka_source_options, sql_templates
from jobs.registry import FLINK_JOBS
from jobs.spec import FlinkJob
from udfs.agents_udtf import NAME as AGENTS_FUNCTION
from udfs.agents_udtf import RESULT_FIELDS, run_agents_udtf
from vigil.rules import RulesConfig
from vigil.settings import Settings

ENTRY = FLINK_JOBS["agents"]
OPEN_PREFIX = "open_"  # statements of the preliminary analyses (agents.early_windows > 0)
INSERT = "insert_insights"  # rendered once per episode view: closed, then open


def agents_sql(settings: Settings, rules: RulesConfig | None, overrides: Mapping[str, object]) -> JobSql:
    """The job's statements (sql/flink/agents/, in file order)."""
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
        **overrides,
    }
    early = agents.early_windows > 0
    runs = [("episodes", "TRUE"), *((("open_episodes", "FALSE"),) if early else ())]  # closed, then preliminary
    sql = JobSql()
    for template in sql_templates(ENTRY.sql_folder):
        if template.name == INSERT:
            for view, closed in runs:
                sql.add(template, settings, **params, episodes_view=view, closed=closed)
        elif early or not template.name.startswith(OPEN_PREFIX):
            sql.add(template, settings, **params)
    return sql


def udf_signature(settings: Settings) -> str:
    """The table function's part of the plan fingerprint: its result row."""
    return f"python table function {AGENTS_FUNCTION} RETURNS {[name for name, _ in RESULT_FIELDS]}"


# The open-episode OVER aggregates keep an accumulator per (machine, episode) that no timer clears: state of
# episodes idle this long is dropped (window TVFs -- the closed episodes -- clear their own state anyway).
STATE_TTL = "1 d"


def prepare(env: TableEnvironment, settings: Settings, rules: RulesConfig | None) -> None:
    """Bound the open episodes' state and register RUN_AGENTS."""
    env.get_config().set("table.exec.state.ttl", STATE_TTL)
    env.create_temporary_system_function(AGENTS_FUNCTION, run_agents_udtf(settings))


JOB = FlinkJob(ENTRY, agents_sql, prepare=prepare, functions=udf_signature)

if __name__ == "__main__":
    JOB.main()
