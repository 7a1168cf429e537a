-- Each window with its sensor's limits from flink-conf/rules.yaml (rendered and validated by
-- vigil/rules.py). Types and sensors the file does not list get the defaults: z-score and stuck only.
CREATE TEMPORARY VIEW window_stats_limits AS
SELECT
    *,
    {min_limit_case} AS min_limit,
    {max_limit_case} AS max_limit,
    {max_step_case} AS max_step,
    {zscore_max_case} AS zscore_max,
    {stuck_windows_case} AS stuck_windows,
    -- A window is flat when it has at least two samples and no variance at all.
    CASE WHEN `count` >= 2 AND `stddev` = 0 THEN 1 ELSE 0 END AS flat
FROM window_stats_on_time
