-- A window is short when its sample count falls below (1 - max_drop) x the series' average count over its
-- last {count_windows} windows and this one. The average, not the highest: gateways that sample on their own
-- clock put 4 to 6 samples of ~1 Hz data into a 5-s window, and a 4 after a 6 is jitter, not loss.
-- Its own view: Flink computes one OVER frame per SELECT.
CREATE TEMPORARY VIEW window_stats_count_short AS
SELECT
    *,
    CASE WHEN CAST(`count` AS DOUBLE) < AVG(CAST(`count` AS DOUBLE)) OVER (
        PARTITION BY equipment_id, sensor ORDER BY rowtime ROWS BETWEEN {count_windows} PRECEDING AND CURRENT ROW
    ) * (1 - CAST({count_max_drop} AS DOUBLE)) THEN 1 ELSE 0 END AS count_short
FROM window_stats_history
