-- Window statistics (one record per machine, sensor and window) as written by the window-stats job.
-- Event time is the window's START, and the watermark trails the newest start by
-- {scoring_out_of_order_windows} window(s) + 1 ms: a window is judged as soon as the next window has
-- reached every partition (the window-stats job emits a window's records together, in order, and a
-- progress marker to every partition with them: no partition is ever idle, see jobs.flink_env.never_idle).
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
    rowtime AS TO_TIMESTAMP_LTZ(window_start_ms, 3),
    WATERMARK FOR rowtime AS rowtime - INTERVAL '{scoring_watermark_delay_s}' SECOND
) WITH (
    {window_stats_source_options}
)
