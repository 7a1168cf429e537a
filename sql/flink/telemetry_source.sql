-- Raw telemetry written by the edge service: one record per machine and window-aligned chunk.
-- Every sample of a record lies in the same tumbling window, so the record's event time places
-- all of its samples in the right window.
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
    kafka_partition INT METADATA FROM 'partition' VIRTUAL,
    kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
    rowtime AS TO_TIMESTAMP_LTZ(event_time_ms, 3),
    WATERMARK FOR rowtime AS rowtime - INTERVAL '{lateness_s}' SECOND
) WITH (
    'connector' = 'kafka',
    'topic' = '{telemetry_topic}',
    {kafka_properties}
    'properties.group.id' = '{consumer_group}',
    'properties.auto.offset.reset' = 'earliest',
    'properties.session.timeout.ms' = '{session_timeout_ms}',
    'properties.heartbeat.interval.ms' = '{heartbeat_interval_ms}',
    'scan.startup.mode' = 'group-offsets',
    'format' = 'json',
    'json.fail-on-missing-field' = 'false',
    'json.ignore-parse-errors' = 'false'
)
