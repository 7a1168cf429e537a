-- Episodes still going on, analysed early: the {early_windows}th anomalous window of an episode emits it as
-- it stands (start .. this window), so a long fault (bearing wear runs for hours) has a preliminary
-- diagnosis minutes after it starts instead of when it ends; the closed episode's analysis later replaces it
-- (same episode_id: ClickHouse keeps the newest). The episode rule is the session window's: an anomalous
-- window more than {gap_windows} windows after the previous one starts a new episode.
CREATE TEMPORARY VIEW open_episodes AS
SELECT equipment_id, site, equipment_type, start_ms, end_ms, windows
FROM (
    SELECT equipment_id, site, equipment_type, window_end_ms AS end_ms,
        MIN(window_start_ms) OVER e AS start_ms,
        COUNT(*) OVER e AS windows
    FROM anomalies_flagged_numbered
    WINDOW e AS (PARTITION BY equipment_id, episode_no ORDER BY rowtime
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
WHERE windows = {early_windows}
