-- The agents' insights (vigil/contracts.py INSIGHT_JSON_SCHEMA). Key: equipment_id (empty for a
-- shared cause); dedup key downstream: (episode_id, agent, kind).
CREATE TABLE insights_out (
    equipment_id STRING,
    site STRING,
    equipment_type STRING,
    agent STRING,
    kind STRING,
    episode_id STRING,
    window_start_ms BIGINT,
    window_end_ms BIGINT,
    closed BOOLEAN,
    title STRING,
    severity STRING,
    confidence DOUBLE,
    fault_type STRING,
    sensors ARRAY<STRING>,
    details STRING,
    emitted_at_ms BIGINT
) WITH (
    {insights_sink_options}
)
