-- One progress marker per partition of the window-stats topic for every window the watermark closed
-- (vigil.contracts.WINDOW_STATS_MARKER_PREFIX): a reader's watermark then moves on every partition, also
-- on those no machine hashes to, so no partition has to be declared idle. Readers skip markers (count 0).
-- The windows are those of the on-time telemetry chunks (one row per machine and window, not per sample),
-- closed by the same watermark that emits their statistics. The keys are a column of each window's row:
-- unnested from a constant, the planner would join every window against a VALUES source (state that never
-- expires).
CREATE TEMPORARY VIEW window_stats_markers AS
SELECT k.marker_key AS equipment_id, '' AS site, '' AS equipment_type, '' AS sensor, '' AS unit,
       w.window_start_ms, w.window_end_ms, CAST(0 AS BIGINT) AS `count`, 0.0 AS `avg`, 0.0 AS `stddev`,
       0.0 AS `min`, 0.0 AS `max`, w.emitted_at_ms, w.rowtime
FROM (
    SELECT MIN(chunk_start_ms) AS window_start_ms, MIN(chunk_start_ms) + {window_size_ms} AS window_end_ms,
           {now_ms_expr} AS emitted_at_ms,
           PARTITION_KEYS('{window_stats_marker_prefix}', {window_stats_partitions}) AS marker_keys,
           window_time AS rowtime
    FROM TABLE(TUMBLE(TABLE telemetry_classified, DESCRIPTOR(rowtime), INTERVAL '{window_size_s}' SECOND))
    WHERE NOT is_late AND equipment_id <> ''
    GROUP BY window_start, window_end, window_time
) AS w
CROSS JOIN UNNEST(w.marker_keys) AS k (marker_key)
