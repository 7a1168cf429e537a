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

from collections.abc import Callable, Mapping

from pyflink.table import TableEnvironment

from jobs.flink_env import (
    JobSql,
    SqlTemplate,
    kafka_sink_options,
    kafka_source_options,
    never_idle,
    sql_escape,
    sql_templates,
)
from jobs.registry import FLINK_JOBS
from jobs.spec import FlinkJob
from udfs.scoring_udf import NAME as SCORE_FUNCTION
from udfs.scoring_udf import RESULT_TYPE, score_hops_udf
from vigil.rules import ResolvedRules, RulesConfig, load_rules, sensor_key
from vigil.settings import Settings

ENTRY = FLINK_JOBS["anomaly-scoring"]


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
        "count_persist_windows": str(config.sample_count.persist_windows),
        "count_persist_preceding": str(config.sample_count.persist_windows - 1),
    }


def _ms_to_s(ms: int) -> str:
    return f"{ms / 1000:.3f}"


INPUT_PREFIX = "input_"  # statements defining `window_stats_on_time` from the window-stats topic


def scoring_sql(
    settings: Settings,
    rules: RulesConfig | None,
    overrides: Mapping[str, object],
    input_templates: list[SqlTemplate] | None = None,
) -> JobSql:
    """The job's statements (sql/flink/anomaly_scoring/, in file order). ``overrides`` replace template values.

    ``input_templates`` replace the ``input_*`` statements, which read the window-stats topic: the combined job
    (jobs/fleet_pipeline.py) hands the window operator's output over instead.
    """
    config = rules if rules is not None else load_rules(settings.scoring.rules_path)
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
    counts = config.stuck_window_counts()
    stuck_case = "CASE stuck_windows " + " ".join(f"WHEN {n} THEN flat_last_{n} >= {n}" for n in counts) + " END"
    sql = JobSql()
    replaced, view = False, "window_stats_counted"
    for template in sql_templates(ENTRY.sql_folder):
        if template.name.startswith(INPUT_PREFIX) and input_templates is not None:
            if not replaced:
                for handoff in input_templates:
                    sql.add(handoff, settings, **params)
                replaced = True
        elif template.name == "rules_stuck":
            # One chained view per distinct stuck_windows N (each OVER frame needs its own SELECT).
            for n in counts:
                output = f"window_stats_flat_{n}"
                sql.add(template, settings, **params, n=n, n_preceding=n - 1, input_view=view, output_view=output)
                view = output
        elif template.name == "rules_checks":
            sql.add(template, settings, **params, input_view=view, stuck_case=stuck_case)
        else:
            sql.add(template, settings, **params)
    return sql


def udf_signature(settings: Settings) -> str:
    """The Python UDF's part of the plan fingerprint: its result type and the history it reads."""
    return f"python function {SCORE_FUNCTION} RETURNS {RESULT_TYPE} (hop {settings.scoring.hop_windows} windows)"


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


def prepare_scoring(env: TableEnvironment, settings: Settings, rules: RulesConfig | None) -> None:
    """Size the Python workers' batches and register SCORE_HOPS (the Java functions come with the DDL)."""
    configure_python(env)
    register_functions(env, settings, rules if rules is not None else load_rules(settings.scoring.rules_path))


def prepare(env: TableEnvironment, settings: Settings, rules: RulesConfig | None) -> None:
    """The scoring, and a source that is never idle: the window-stats topic carries progress markers."""
    prepare_scoring(env, settings, rules)
    never_idle(env)


JOB = FlinkJob(ENTRY, scoring_sql, prepare=prepare, functions=udf_signature, uses_rules=True)

if __name__ == "__main__":
    JOB.main()
