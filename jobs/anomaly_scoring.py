"""Anomaly-scoring job: window statistics -> rules + ONNX models -> one verdict per machine and window.

Reads the window-stats topic (event time = window start). Per (machine, sensor) series the JVM checks
static thresholds, a rate-of-change limit, a stuck sensor (no variance for N windows) and a z-score
against an EWMA baseline held in Flink keyed state (a Java UDAF); limits come from
flink-conf/rules.yaml, validated by vigil/rules.py and rendered into the SQL as CASE expressions. A HOP
window then gathers each machine's last few windows (its feature history, held as window state), and
a vectorised pandas UDF (udfs/scoring_udf.py) scores them in Arrow batches with the live ONNX models
of each equipment type (Isolation Forest, PCA T2/Q; hot-swapped from the registry), notices dead
sensors and silent machines, and combines everything into a verdict with a severity and the sensors
that contributed most. Verdicts go to the anomalies topic; late records to the dead-letter topic.

Run it in-process (PyFlink local mode):      python -m jobs.anomaly_scoring
or on a standalone cluster with flink run:    vigil job submit anomaly-scoring --target cluster
"""

from __future__ import annotations

import argparse
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
from udfs.scoring_udf import NAME as SCORE_FUNCTION
from udfs.scoring_udf import RESULT_TYPE, score_hops_udf
from vigil.logs import setup_logging
from vigil.rules import ResolvedRules, RulesConfig, load_rules, sensor_key
from vigil.settings import Settings, get_settings

JOB_NAME = "vigil-anomaly-scoring"


def _double(value: float) -> str:
    return f"CAST({value!r} AS DOUBLE)"


def limit_case(
    rules: list[ResolvedRules],
    pick: Callable[[ResolvedRules], float | int | None],
    sql_type: str,
    default: float | int | None = None,
) -> str:
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
        "count_windows": str(config.sample_count.windows),
        "count_max_drop": repr(config.sample_count.max_drop),
    }


def _ms_to_s(ms: int) -> str:
    return f"{ms / 1000:.3f}"


# Templates that define `window_stats_on_time` from the window-stats topic (with a lateness branch).
KAFKA_INPUT = ("anomaly_scoring_source", "dead_letter_sink", "anomaly_scoring_classify", "anomaly_scoring_on_time")


def statements(
    settings: Settings,
    config: RulesConfig | None = None,
    input_views: tuple[str, ...] = KAFKA_INPUT,
    **overrides: object,
) -> tuple[list[str], list[str]]:
    """The job as SQL: DDL (functions, tables, views) and its INSERTs. ``overrides`` replace template values.

    ``input_views`` are the templates defining ``window_stats_on_time``: the window-stats topic here, the
    window operator itself in the combined job (jobs/fleet_pipeline.py).
    """
    config = config if config is not None else load_rules(settings.scoring.rules_path)
    scoring, size_ms = settings.scoring, settings.window.size_ms
    group = scoring.consumer_group
    params: dict[str, object] = {
        "window_stats_source_options": kafka_source_options(settings, settings.kafka.window_stats_topic, group),
        "anomalies_sink_options": kafka_sink_options(settings, settings.kafka.anomalies_topic, f"{group}-anomalies"),
        "dead_letter_sink_options": kafka_sink_options(settings, settings.kafka.dead_letter_topic, f"{group}-late"),
        "scoring_watermark_delay_s": _ms_to_s(scoring.out_of_order_windows * size_ms + 1),
        "scoring_out_of_order_windows": scoring.out_of_order_windows,
        "hop_size_s": _ms_to_s(scoring.hop_windows * size_ms),
        "history_windows": scoring.hop_windows,
        **rules_params(config),
    }
    params.update(overrides)
    ddl = [
        render_sql(name, settings, **params)
        for name in (
            "anomaly_rules_functions",
            "anomaly_scoring_sink",
            *input_views,
            "anomaly_rules_limits",
            "anomaly_rules_history",
        )
    ]
    ddl.append(render_sql("anomaly_rules_count", settings, **params))
    # One chained view per distinct stuck_windows N (each OVER frame needs its own SELECT).
    view = "window_stats_counted"
    counts = config.stuck_window_counts()
    for n in counts:
        ddl.append(
            render_sql(
                "anomaly_rules_stuck",
                settings,
                **params,
                n=n,
                n_preceding=n - 1,
                input_view=view,
                output_view=f"window_stats_flat_{n}",
            )
        )
        view = f"window_stats_flat_{n}"
    stuck_case = "CASE stuck_windows " + " ".join(f"WHEN {n} THEN flat_last_{n} >= {n}" for n in counts) + " END"
    ddl.append(render_sql("anomaly_rules_checks", settings, **params, input_view=view, stuck_case=stuck_case))
    ddl += [render_sql(name, settings, **params) for name in ("anomaly_scoring_rule_results", "anomaly_scoring_hops")]
    late = ("anomaly_scoring_late",) if input_views == KAFKA_INPUT else ()
    inserts = [render_sql(name, settings, **params) for name in ("anomaly_scoring", *late)]
    return ddl, inserts


def udf_signature(settings: Settings) -> str:
    """The Python UDF's part of the plan fingerprint: its result type and the history it reads."""
    return f"-- python function {SCORE_FUNCTION} RETURNS {RESULT_TYPE} (hop {settings.scoring.hop_windows} windows)"


def register_functions(env: TableEnvironment, settings: Settings, config: RulesConfig) -> None:
    """SCORE_HOPS, configured from the settings (the Java functions are registered by the DDL)."""
    scoring = settings.scoring
    expected = {etype: sorted(sensors) for etype, sensors in config.equipment_types.items()}
    env.create_temporary_system_function(
        SCORE_FUNCTION,
        score_hops_udf(
            expected,
            settings.models_dir,
            settings.window.size_ms,
            scoring.history_windows,
            scoring.dead_after_ms,
            scoring.critical_ratio,
            scoring.model_poll_s,
            scoring.onnx_threads,
            scoring.model_persistence_windows,
        ),
    )


def configure_python(env: TableEnvironment) -> None:
    """Arrow batches sized for scoring: big enough to amortise ONNX calls, flushed at least every 200 ms."""
    config = env.get_config()
    config.set("python.fn-execution.arrow.batch.size", "10000")
    config.set("python.fn-execution.bundle.time", "200")


def assemble(env: TableEnvironment, settings: Settings, config: RulesConfig, ddl: list[str], inserts: list[str]):
    """Configure the Python workers, register SCORE_HOPS, run the DDL and gather the INSERTs into one job."""
    configure_python(env)
    register_functions(env, settings, config)
    return statement_set_of(env, ddl, inserts)


def build(env: TableEnvironment, settings: Settings, config: RulesConfig | None = None, **overrides: object):
    """Register the functions, tables and views, and return the statement set holding the INSERTs."""
    config = config if config is not None else load_rules(settings.scoring.rules_path)
    return assemble(env, settings, config, *statements(settings, config, **overrides))


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
        [*ddl, *inserts, udf_signature(settings)],
        resume=not args.no_resume,
        rest_port=settings.scoring.rest_port,
    )
    statement_set = assemble(env, settings, config, ddl, inserts)  # exactly the SQL the checkpoints are keyed by
    if args.explain:
        print(statement_set.explain())
        return
    execute(env, statement_set, JOB_NAME)


if __name__ == "__main__":
    main()
