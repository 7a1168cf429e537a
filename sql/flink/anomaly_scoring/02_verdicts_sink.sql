-- One verdict per scored (machine, window), plus one per machine that fell silent
-- (vigil/contracts.py ANOMALY_JSON_SCHEMA). Key: equipment_id; dedup key downstream:
-- (equipment_id, window_start_ms).
CREATE TABLE anomalies_out (
    equipment_id STRING,
    site STRING,
    equipment_type STRING,
    window_start_ms BIGINT,
    window_end_ms BIGINT,
    kind STRING,
    is_anomaly BOOLEAN,
    severity STRING,
    score DOUBLE,
    scores MAP<STRING, DOUBLE>,
    detectors ARRAY<STRING>,
    rule_hits ARRAY<STRING>,
    top_sensors ARRAY<STRING>,
    dead_sensors ARRAY<STRING>,
    model_versions STRING,
    summary STRING,
    last_seen_ms BIGINT,
    emitted_at_ms BIGINT
) WITH (
    {anomalies_sink_options}
)
