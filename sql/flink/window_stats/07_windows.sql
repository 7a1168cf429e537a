-- 5-second tumbling windows per machine and sensor, computed in the JVM from raw samples.
-- Standard deviation by Welford/Chan in the JVM (udfs/java), exact even when the mean dwarfs the spread.
-- rowtime is the window's own time attribute (window_time = end - 1 ms): a windowed operator downstream in
-- the same job (the scoring of jobs/fleet_pipeline.py) fires at the very watermark that closed this window.
CREATE TEMPORARY VIEW window_stats_windows AS
SELECT
    equipment_id,
    site,
    equipment_type,
    sensor,
    unit,
    MIN(chunk_start_ms) AS window_start_ms,
    MIN(chunk_start_ms) + {window_size_ms} AS window_end_ms,
    COUNT(*) AS `count`,
    AVG(v) AS `avg`,
    STDDEV_POP_EXACT(v) AS `stddev`,
    MIN(v) AS `min`,
    MAX(v) AS `max`,
    {now_ms_expr} AS emitted_at_ms,
    window_time AS rowtime
FROM TABLE(TUMBLE(TABLE samples_on_time, DESCRIPTOR(rowtime), INTERVAL '{window_size_s}' SECOND))
GROUP BY window_start, window_end, window_time, equipment_id, site, equipment_type, sensor, unit
