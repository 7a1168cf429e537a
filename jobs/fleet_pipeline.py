"""Fleet pipeline job: window statistics AND anomaly scoring in one Flink job, for the shortest alert path.

The split deployment (jobs/window_stats.py -> window-stats topic -> jobs/anomaly_scoring.py) decouples
the two, but the scoring job can only know that a window is complete when the NEXT window has reached
every partition of the topic: one window (5 s) of latency on every verdict. Here the scoring views read
the window operator's output directly (sql/flink/fleet_pipeline/ replaces the scoring job's ``input_*``
statements); its windows carry their own time attribute, so the rules and the HOP window of the scoring
fire at the very watermark that closed the window. Same SQL templates and UDFs as the two jobs (the
window-stats topic is still written for the sinks), so the verdicts are the same.

Run it in-process (PyFlink local mode):      python -m jobs.fleet_pipeline
or on a standalone cluster with flink run:    vigil job submit fleet-pipeline --target cluster
"""

from __future__ import annotations

from collections.abc import Mapping

from pyflink.table import TableEnvironment

from jobs import anomaly_scoring, window_stats
from jobs.flink_env import JobSql, sql_templates
from jobs.registry import FLINK_JOBS
from jobs.spec import FlinkJob
from vigil.rules import RulesConfig
from vigil.settings import Settings

ENTRY = FLINK_JOBS["fleet-pipeline"]


def fleet_pipeline_sql(settings: Settings, rules: RulesConfig | None, overrides: Mapping[str, object]) -> JobSql:
    """Both jobs' statements, the scoring reading the windows in-job."""
    handoff = sql_templates(ENTRY.sql_folder)
    # No reader of this job's window-stats topic keeps a watermark (only the sinks read it): the windows need
    # neither the sort nor the single writer that the split scoring job's source relies on.
    unordered = {"window_stats_order": "", "window_stats_writers": settings.flink.parallelism, **overrides}
    return window_stats.JOB.sql(settings, None, unordered) + anomaly_scoring.scoring_sql(
        settings, rules, overrides, input_templates=handoff
    )


def prepare(env: TableEnvironment, settings: Settings, rules: RulesConfig | None) -> None:
    """The scoring's functions; the source is the telemetry topic, as in the window-stats job."""
    anomaly_scoring.prepare_scoring(env, settings, rules)
    window_stats.prepare(env, settings, rules)


JOB = FlinkJob(
    ENTRY,
    fleet_pipeline_sql,
    prepare=prepare,
    functions=anomaly_scoring.udf_signature,
    uses_rules=True,
)

if __name__ == "__main__":
    JOB.main()
