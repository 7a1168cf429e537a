-- Verdicts of the anomaly-scoring job (vigil/contracts.py ANOMALY_JSON_SCHEMA); the agents job needs
-- only which machine was anomalous when. Event time is the window's start; the watermark trails the
-- newest start by one window + 1 ms, as in the scoring job.
CREATE TABLE anomalies_in (
    equipment_id STRING,
    site STRING,
    equipment_type STRING,
    window_start_ms BIGINT,
    window_end_ms BIGINT,
    kind STRING,
    is_anomaly BOOLEAN,
    rowtime AS TO_TIMESTAMP_LTZ(window_start_ms, 3),
    WATERMARK FOR rowtime AS rowtime - INTERVAL '{agents_watermark_delay_s}' SECOND
) WITH (
    {anomalies_source_options}
)
