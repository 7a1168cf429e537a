-- The records the rules and models judge (not the window-stats job's progress markers, count 0).
CREATE TEMPORARY VIEW window_stats_on_time AS
SELECT equipment_id, site, equipment_type, sensor, unit, window_start_ms, window_end_ms, `count`, `avg`,
       `stddev`, `min`, `max`, emitted_at_ms, rowtime
FROM window_stats_classified
WHERE NOT is_late AND `count` > 0
