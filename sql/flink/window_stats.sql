-- 5-second tumbling windows per machine and sensor, computed in the JVM from raw samples.
-- Standard deviation by Welford/Chan in the JVM (udfs/java), exact even when the mean dwarfs the spread.
INSERT INTO window_stats_out
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
    {now_ms_expr} AS emitted_at_ms
FROM TABLE(TUMBLE(TABLE samples_on_time, DESCRIPTOR(rowtime), INTERVAL '{window_size_s}' SECOND))
GROUP BY window_start, window_end, equipment_id, site, equipment_type, sensor, unit
