-- Raw telemetry written by the edge service: one record per machine and window-aligned chunk.
-- Every sample of a record lies in the same tumbling window, so the record's event time (its
-- newest sample) places all of its samples in the right window.
CREATE TABLE telemetry (
    equipment_id STRING,
    site STRING,
    equipment_type STRING,
    gateway_id STRING,
    `sequence` BIGINT,
    chunk_start_ms BIGINT,
    event_time_ms BIGINT,
    ingested_at_ms BIGINT,
    sensors ARRAY<ROW<sensor STRING, unit STRING, ts ARRAY<BIGINT>, v ARRAY<DOUBLE>>>,
    {source_metadata_columns}
    rowtime AS TO_TIMESTAMP_LTZ(event_time_ms, 3),
    WATERMARK FOR rowtime AS {telemetry_watermark}
) WITH (
    {source_options}
)
