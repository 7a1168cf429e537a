-- Window statistics (one record per machine, sensor and window) as written by the window-stats job.
-- Event time is the window's end; a window's records reach the topic together once the upstream
-- watermark passed it, so one window of out-of-orderness is ample (the OVER aggregation drops rows
-- behind the watermark).
CREATE TABLE window_stats_in (
    equipment_id STRING,
    site STRING,
    equipment_type STRING,
    sensor STRING,
    unit STRING,
    window_start_ms BIGINT,
    window_end_ms BIGINT,
    `count` BIGINT,
    `avg` DOUBLE,
    `stddev` DOUBLE,
    `min` DOUBLE,
    `max` DOUBLE,
    emitted_at_ms BIGINT,
    rowtime AS TO_TIMESTAMP_LTZ(window_end_ms, 3),
    WATERMARK FOR rowtime AS rowtime - INTERVAL '{window_size_s}' SECOND
) WITH (
    {window_stats_source_options}
)
