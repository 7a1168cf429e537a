"""The record contracts between pipeline stages, defined once for every reader."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

# Telemetry records on the telemetry topic come from the edge (edge/chunking.py); a record whose gateway_id is
# MARKER_GATEWAY is a progress marker (edge/progress.py): no machine, no samples, only event time.
MARKER_GATEWAY = "edge-progress"

# Window statistics on the window-stats topic, one JSON record per (machine, sensor, window), as
# written by the Flink job (sql/flink/window_stats/03_window_stats_sink.sql). Every field is required.
WINDOW_STATS_LABELS = ("equipment_id", "site", "equipment_type", "sensor", "unit")
# Besides the windows, one progress marker per partition and closed window: equipment_id is this prefix and a
# number chosen to land on that partition, count 0, every label empty (sql/flink/window_stats/10_insert_progress_
# markers.sql). It moves the reader's watermark on partitions no machine hashes to; every reader skips it.
WINDOW_STATS_MARKER_PREFIX = "~partition-"
WINDOW_STATS_VALUES = ("avg", "stddev", "min", "max", "count")
WINDOW_STATS_JSON_SCHEMA = pa.schema(
    [(name, pa.string()) for name in WINDOW_STATS_LABELS]
    + [("window_start_ms", pa.int64()), ("window_end_ms", pa.int64()), ("count", pa.int64())]
    + [(name, pa.float64()) for name in ("avg", "stddev", "min", "max")]
    + [("emitted_at_ms", pa.int64())]
)

# Verdicts on the anomalies topic: one JSON record per scored (machine, window) -- normal windows
# included, so "every window was scored exactly once" can be checked -- plus one `dead_machine`
# record when a machine falls silent. Written by the anomaly-scoring Flink job
# (sql/flink/anomaly_scoring/02_verdicts_sink.sql); the key is (equipment_id, window_start_ms).
ANOMALY_KINDS = ("window", "dead_machine")
SEVERITIES = ("normal", "warning", "critical")  # ordered: a higher index is worse
# Scores: the ``scores`` object maps each detector that scored the window (and ``rules``, the largest
# |z| / zscore_max of the window's sensors) to its score normalised to its own threshold: 1.0 = at the alarm
# limit. A detector that did not score (no live model yet, incomplete window, warm-up) has no entry. Which
# detectors there are is the detector registry's business (detectors/): the record's shape never changes.
# A model fires when above 1 in scoring.model_persistence_windows consecutive windows, or at once at
# scoring.critical_ratio; `detectors` lists what fired.
SCORES_FIELD = "scores"
RULES_SCORE = "rules"
ANOMALY_JSON_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("equipment_id", "site", "equipment_type")]
    + [("window_start_ms", pa.int64()), ("window_end_ms", pa.int64())]
    + [("kind", pa.string()), ("is_anomaly", pa.bool_()), ("severity", pa.string())]
    + [("score", pa.float64())]  # max of the normalised detector scores (0.0 when none scored)
    # detectors that fired: models (e.g. pca_t2q), threshold_min, threshold_max, rate_of_change,
    # stuck, zscore, dead_sensor, dead_machine
    + [("detectors", pa.list_(pa.string()))]
    + [("rule_hits", pa.list_(pa.string()))]  # "<sensor>:<rule>", e.g. "bearing_temp:threshold_max"
    + [("top_sensors", pa.list_(pa.string()))]  # most contributing first, at most 3
    + [("dead_sensors", pa.list_(pa.string()))]
    + [("model_versions", pa.string())]  # e.g. "isolation_forest=v0001 pca_t2q=v0002"; "" without models
    + [("summary", pa.string())]  # one human-readable line for an alert
    + [("last_seen_ms", pa.int64())]  # end of the machine's newest window with data
    + [("emitted_at_ms", pa.int64())]
)


def anomaly_json_schema(score_names: Sequence[str]) -> pa.Schema:
    """The verdict schema with the ``scores`` object read as a struct of these names (absent -> null).

    pyarrow's JSON reader has no map type; a reader that needs the scores names the ones it knows (the
    registry's), which keeps parsing vectorised.
    """
    scores = pa.struct([(name, pa.float64()) for name in score_names])
    return ANOMALY_JSON_SCHEMA.insert(ANOMALY_JSON_SCHEMA.get_field_index("score") + 1, pa.field(SCORES_FIELD, scores))


# One insight of an agent about an anomaly episode (agents/base.py Insight), written by the agents job
# (sql/flink/agents/04_insights_sink.sql); key: equipment_id; dedup key downstream: (episode_id, agent, kind).
# window_start_ms / window_end_ms: the episode's first and last anomalous window.
INSIGHT_SEVERITIES = ("info", "warning", "critical")
INSIGHT_JSON_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("equipment_id", "site", "equipment_type", "agent", "kind", "episode_id")]
    + [("window_start_ms", pa.int64()), ("window_end_ms", pa.int64())]
    # false: the episode was still going on (a preliminary analysis, replaced once it is over)
    + [("closed", pa.bool_())]
    + [("title", pa.string()), ("severity", pa.string()), ("confidence", pa.float64())]
    + [("fault_type", pa.string()), ("sensors", pa.list_(pa.string()))]
    + [("details", pa.string())]  # JSON object: the agent's own fields (ranking, health index, actions, ...)
    + [("emitted_at_ms", pa.int64())]
)
