"""Anomaly-rules job: window statistics -> stateful statistical rules -> the anomalies topic.

Reads the window-stats topic (event time = window end), and per (machine, sensor) series checks
static thresholds, a rate-of-change limit, a stuck sensor (no variance for N windows) and a z-score
against an EWMA baseline held in Flink keyed state (a Java UDAF, checkpointed with the job). Limits
come from flink-conf/rules.yaml, validated by udfs/rules.py and rendered into the SQL as CASE
expressions, so everything runs in the JVM with no per-record Python. One record per window that
breaks at least one rule goes to the anomalies topic.

Run it in-process (PyFlink local mode):      python -m jobs.anomaly_rules
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from pyflink.table import TableEnvironment

from jobs.flink_env import (
    create_table_env,
    execute,
    kafka_sink_options,
    kafka_source_options,
    render_sql,
    sql_escape,
    statement_set_of,
)
from udfs.rules import ResolvedRules, RulesConfig, load_rules, sensor_key
from vigil.settings import Settings, get_settings

JOB_NAME = "vigil-anomaly-rules"


def _double(value: float) -> str:
    return f"CAST({value!r} AS DOUBLE)"


def limit_case(rules: list[ResolvedRules], pick: Callable[[ResolvedRules], float | int | None],
               sql_type: str, default: float | int | None = None) -> str:
    """``CASE CONCAT(equipment_type, '/', sensor) WHEN 'pump/flow' THEN ... END``: one WHEN per sensor."""
    literal = _double if sql_type == "DOUBLE" else str
    whens = [
        f"WHEN '{sql_escape(sensor_key(r.equipment_type, r.sensor))}' THEN {literal(value)}"
        for r in rules
        if (value := pick(r)) is not None and value != default
    ]
    fallback = f"CAST(NULL AS {sql_type})" if default is None else literal(default)
    if not whens:
        return fallback
    body = "\n        ".join(whens)
    return f"CASE CONCAT(equipment_type, '/', sensor)\n        {body}\n        ELSE {fallback}\n    END"


def rules_params(config: RulesConfig) -> dict[str, str]:
    """Template values rendered from the validated rules config."""
    rules = config.resolved()
    defaults = config.defaults
    return {
        "min_limit_case": limit_case(rules, lambda r: r.min, "DOUBLE"),
        "max_limit_case": limit_case(rules, lambda r: r.max, "DOUBLE"),
        "max_step_case": limit_case(rules, lambda r: r.max_step, "DOUBLE"),
        "zscore_max_case": limit_case(rules, lambda r: r.zscore_max, "DOUBLE", defaults.zscore_max),
        "stuck_windows_case": limit_case(rules, lambda r: r.stuck_windows, "INT", defaults.stuck_windows),
        "ewma_alpha": repr(config.ewma.alpha),
        "ewma_warmup": str(config.ewma.warmup),
    }


def statements(settings: Settings, config: RulesConfig | None = None, **overrides: object) -> tuple[
    list[str], list[str]
]:
    """The job as SQL: DDL (function, tables, views) and its INSERT. ``overrides`` replace template values."""
    config = config if config is not None else load_rules(settings.flink.rules_path)
    params: dict[str, object] = {
        "window_stats_source_options": kafka_source_options(
            settings, settings.kafka.window_stats_topic, settings.flink.rules_consumer_group
        ),
        "anomalies_sink_options": kafka_sink_options(
            settings, settings.kafka.anomalies_topic, f"{settings.flink.rules_consumer_group}-anomalies"
        ),
        **rules_params(config),
    }
    params.update(overrides)
    ddl = [render_sql(name, settings, **params) for name in (
        "anomaly_rules_functions", "anomaly_rules_source", "anomaly_rules_sink", "anomaly_rules_limits",
        "anomaly_rules_history",
    )]
    # One chained view per distinct stuck_windows N (each OVER frame needs its own SELECT).
    view = "window_stats_history"
    counts = config.stuck_window_counts()
    for n in counts:
        ddl.append(render_sql("anomaly_rules_stuck", settings, **params, n=n, n_preceding=n - 1,
                              input_view=view, output_view=f"window_stats_flat_{n}"))
        view = f"window_stats_flat_{n}"
    stuck_case = "CASE stuck_windows " + " ".join(f"WHEN {n} THEN flat_last_{n} >= {n}" for n in counts) + " END"
    ddl.append(render_sql("anomaly_rules_checks", settings, **params, input_view=view, stuck_case=stuck_case))
    return ddl, [render_sql("anomaly_rules", settings, **params)]


def build(env: TableEnvironment, settings: Settings, config: RulesConfig | None = None, **overrides: object):
    """Register the function, tables and views, and return the statement set holding the INSERT."""
    ddl, inserts = statements(settings, config, **overrides)
    return statement_set_of(env, ddl, inserts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-resume", action="store_true", help="ignore retained checkpoints")
    parser.add_argument("--explain", action="store_true", help="print the optimized plan and exit")
    parser.add_argument("--print-sql", action="store_true", help="print the rendered SQL and exit")
    args, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    config = load_rules(settings.flink.rules_path)  # fails fast, naming the bad field
    ddl, inserts = statements(settings, config)
    if args.print_sql:
        print(";\n\n".join(ddl + inserts) + ";")
        return
    env = create_table_env(settings, JOB_NAME, ddl + inserts, resume=not args.no_resume)
    statement_set = statement_set_of(env, ddl, inserts)  # exactly the SQL the checkpoints are keyed by
    if args.explain:
        print(statement_set.explain())
        return
    execute(env, statement_set, JOB_NAME)


if __name__ == "__main__":
    main()
