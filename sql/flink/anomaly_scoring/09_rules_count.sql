-- The highest sample count of each series over its last {count_windows} windows and this one, as the
-- count a window must reach (x (1 - max_drop)). Its own view: Flink computes one OVER frame per SELECT.
CREATE TEMPORARY VIEW window_stats_counted AS
SELECT
    *,
    CAST(MAX(`count`) OVER (
        PARTITION BY equipment_id, sensor ORDER BY rowtime ROWS BETWEEN {count_windows} PRECEDING AND CURRENT ROW
    ) AS DOUBLE) * (1 - CAST({count_max_drop} AS DOUBLE)) AS min_expected_count
FROM window_stats_history
