-- One anomaly record per window that breaks at least one rule.
-- Severity: critical when a static threshold is broken or two or more rules fire; warning otherwise.
INSERT INTO anomalies_out
SELECT
    equipment_id,
    site,
    equipment_type,
    sensor,
    window_start_ms,
    window_end_ms,
    `avg`,
    zscore,
    ARRAY_REMOVE(ARRAY[
        CASE WHEN threshold_min THEN 'threshold_min' END,
        CASE WHEN threshold_max THEN 'threshold_max' END,
        CASE WHEN rate_of_change THEN 'rate_of_change' END,
        CASE WHEN stuck THEN 'stuck' END,
        CASE WHEN zscore_high THEN 'zscore' END
    ], CAST(NULL AS STRING)) AS rules,
    CASE
        WHEN threshold_min OR threshold_max THEN 'critical'
        WHEN CAST(rate_of_change AS INT) + CAST(stuck AS INT) + CAST(zscore_high AS INT) >= 2 THEN 'critical'
        ELSE 'warning'
    END AS severity,
    'rules' AS detector,
    {now_ms_expr} AS emitted_at_ms
FROM window_rule_checks
WHERE threshold_min OR threshold_max OR rate_of_change OR stuck OR zscore_high
