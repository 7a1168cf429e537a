"""Fleet pipeline job: window statistics AND anomaly scoring in one Flink job, for the shortest alert path.

The split deployment (jobs/window_stats.py -> window-stats topic -> jobs/anomaly_scoring.py) decouples
the two, but the scoring job can only know that a window is complete when the NEXT window has reached
every partition of the topic: one window (5 s) of latency on every verdict. Here the scoring views read
the window operator's output directly; its windows carry their own time attribute, so the rules and the
HOP window of the scoring fire at the very watermark that closed the window. Same SQL templates and UDFs
as the two jobs (the window-stats topic is still written for the sinks), so the verdicts are the same.

Run it in-process (PyFlink local mode):      python -m jobs.fleet_pipeline
or on a standalone cluster with flink run:    vigil job submit fleet-pipeline --target cluster
"""

from __future__ import annotations

import argparse

from pyflink.table import TableEnvironment

from jobs import anomaly_scoring, window_stats
from jobs.flink_env import create_table_env, execute, render_sql
from vigil.logs import setup_logging
from vigil.rules import RulesConfig, load_rules
from vigil.settings import Settings, get_settings

JOB_NAME = "vigil-fleet-pipeline"
HANDOFF = ("fleet_pipeline_handoff",)


def statements(
    settings: Settings, config: RulesConfig | None = None, **overrides: object
) -> tuple[list[str], list[str]]:
    """Both jobs' SQL with the scoring reading the windows in-job. ``overrides`` replace template values."""
    config = config if config is not None else load_rules(settings.scoring.rules_path)
    stats_ddl = [render_sql(name, settings, **overrides) for name in window_stats.DDL]
    stats_inserts = [render_sql(name, settings, **overrides) for name in window_stats.INSERTS]
    scoring_ddl, scoring_inserts = anomaly_scoring.statements(settings, config, input_views=HANDOFF, **overrides)
    return stats_ddl + scoring_ddl, stats_inserts + scoring_inserts


def build(env: TableEnvironment, settings: Settings, config: RulesConfig | None = None, **overrides: object):
    """Register functions, tables and views; return the statement set holding all INSERTs (one job)."""
    config = config if config is not None else load_rules(settings.scoring.rules_path)
    return anomaly_scoring.assemble(env, settings, config, *statements(settings, config, **overrides))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-resume", action="store_true", help="ignore retained checkpoints")
    parser.add_argument("--explain", action="store_true", help="print the optimized plan and exit")
    parser.add_argument("--print-sql", action="store_true", help="print the rendered SQL and exit")
    args, _ = parser.parse_known_args(argv)
    setup_logging()
    settings = get_settings()
    config = load_rules(settings.scoring.rules_path)  # fails fast, naming the bad field
    ddl, inserts = statements(settings, config)
    if args.print_sql:
        print(";\n\n".join(ddl + inserts) + ";")
        return
    env = create_table_env(
        settings,
        JOB_NAME,
        [*ddl, *inserts, anomaly_scoring.udf_signature(settings)],
        resume=not args.no_resume,
        rest_port=settings.flink.rest_port,
    )
    statement_set = anomaly_scoring.assemble(env, settings, config, ddl, inserts)
    if args.explain:
        print(statement_set.explain())
        return
    execute(env, statement_set, JOB_NAME)


if __name__ == "__main__":
    main()
