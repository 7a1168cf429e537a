-- Window statistics, one record per (machine, sensor, window), and the progress markers, to the
-- window-stats topic: sorted by window (a temporal sort releases rows as the watermark passes them, so
-- no later than they were emitted) and written by ONE writer (sink.parallelism 1). Each partition then
-- holds its windows in window order, which is what its reader's watermark assumes: two writers racing
-- through a burst of windows (after an outage) would interleave them and the later ones would make the
-- earlier ones late. (The combined job, whose scoring reads the windows in-job, renders it unsorted.)
INSERT INTO window_stats_out
SELECT equipment_id, site, equipment_type, sensor, unit, window_start_ms, window_end_ms, `count`, `avg`, `stddev`,
       `min`, `max`, emitted_at_ms
FROM (
    SELECT equipment_id, site, equipment_type, sensor, unit, window_start_ms, window_end_ms, `count`, `avg`,
           `stddev`, `min`, `max`, emitted_at_ms, rowtime
    FROM window_stats_windows
    UNION ALL
    SELECT * FROM window_stats_markers
)
{window_stats_order}
