-- Which rules each window breaks. A rule whose limit is not configured (NULL) never fires.
CREATE TEMPORARY VIEW window_rule_checks AS
SELECT
    *,
    COALESCE(`avg` < min_limit, FALSE) AS threshold_min,
    COALESCE(`avg` > max_limit, FALSE) AS threshold_max,
    COALESCE(step > max_step, FALSE) AS rate_of_change,
    COALESCE({stuck_case}, FALSE) AS stuck,
    COALESCE(short_last_n >= {count_persist_windows}, FALSE) AS count_drop,
    COALESCE(abs_zscore > zscore_max, FALSE) AS zscore_high
FROM {input_view}
