-- Windows that broke at least one stateful rule: one record per (machine, sensor, window).
CREATE TABLE anomalies_out (
    equipment_id STRING,
    site STRING,
    equipment_type STRING,
    sensor STRING,
    window_start_ms BIGINT,
    window_end_ms BIGINT,
    `avg` DOUBLE,
    zscore DOUBLE,
    rules ARRAY<STRING>,
    severity STRING,
    detector STRING,
    emitted_at_ms BIGINT
) WITH (
    {anomalies_sink_options}
)
