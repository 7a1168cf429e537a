-- Window statistics, one record per (machine, sensor, window), for the hot and the cold path.
-- One writer: the records leave sorted by window (08_insert_window_stats.sql).
CREATE TABLE window_stats_out (
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
    emitted_at_ms BIGINT
) WITH (
    {window_stats_sink_options},
    'sink.parallelism' = '{window_stats_writers}'
)
