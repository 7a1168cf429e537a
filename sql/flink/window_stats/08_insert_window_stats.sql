-- Window statistics, one record per (machine, sensor, window), to the window-stats topic.
INSERT INTO window_stats_out
SELECT equipment_id, site, equipment_type, sensor, unit, window_start_ms, window_end_ms, `count`, `avg`, `stddev`,
       `min`, `max`, emitted_at_ms
FROM window_stats_windows
