-- A window-stats record is late when the watermark already passed its window: the OVER and HOP
-- operators downstream would drop it silently. Deciding it here sends it down exactly one branch.
CREATE TEMPORARY VIEW window_stats_classified AS
SELECT *, COALESCE(rowtime <= CURRENT_WATERMARK(rowtime), FALSE) AS is_late
FROM window_stats_in
