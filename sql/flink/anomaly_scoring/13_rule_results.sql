-- Each window's rule results in two columns: the rules it broke (comma-separated, '' for none) and
-- |z| / zscore_max (-1 while the EWMA baseline warms up: ARRAY_AGG must not see NULLs).
CREATE TEMPORARY VIEW window_rule_results AS
SELECT
    equipment_id, site, equipment_type, sensor, window_start_ms, `count`, `avg`, `stddev`, `min`, `max`, rowtime,
    CONCAT_WS(',',
        CASE WHEN threshold_min THEN 'threshold_min' END,
        CASE WHEN threshold_max THEN 'threshold_max' END,
        CASE WHEN rate_of_change THEN 'rate_of_change' END,
        CASE WHEN stuck THEN 'stuck' END,
        CASE WHEN zscore_high THEN 'zscore' END,
        CASE WHEN count_drop THEN 'count_drop' END
    ) AS rule_hits,
    COALESCE(abs_zscore / zscore_max, CAST(-1.0 AS DOUBLE)) AS zratio
FROM window_rule_checks
