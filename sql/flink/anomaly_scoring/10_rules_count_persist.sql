-- How many of the series' last {count_persist_windows} windows were short: samples going missing is a
-- condition that lasts (a loose connector, a failing transmitter), while one short window is a hiccup or
-- the partial last window of a machine that stopped (silence has its own rule).
CREATE TEMPORARY VIEW window_stats_counted AS
SELECT
    *,
    SUM(count_short) OVER (
        PARTITION BY equipment_id, sensor ORDER BY rowtime
        ROWS BETWEEN {count_persist_preceding} PRECEDING AND CURRENT ROW
    ) AS short_last_n
FROM window_stats_count_short
