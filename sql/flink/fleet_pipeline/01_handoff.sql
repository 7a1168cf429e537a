-- The combined job's hand-off from window statistics to the scoring views: the windows themselves, not
-- the window-stats topic. Nothing can be late here (the windows are emitted as the watermark passes them,
-- before it moves on), so there is no lateness branch; late telemetry is dead-lettered upstream.
CREATE TEMPORARY VIEW window_stats_on_time AS
SELECT equipment_id, site, equipment_type, sensor, unit, window_start_ms, window_end_ms, `count`, `avg`,
       `stddev`, `min`, `max`, emitted_at_ms, rowtime
FROM window_stats_windows
