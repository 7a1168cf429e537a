-- Score every hop in vectorised batches (SCORE_HOPS: a pandas UDF, udfs/scoring_udf.py) and keep
-- the hops that carry a verdict (a window with data, or a machine that just fell silent).
INSERT INTO anomalies_out
SELECT
    equipment_id, site, equipment_type, v.window_start_ms, v.window_end_ms, v.kind, v.is_anomaly, v.severity,
    v.score, MAP_FROM_ARRAYS(v.score_names, v.score_values) AS scores, v.detectors, v.rule_hits, v.top_sensors, v.dead_sensors,
    v.model_versions, v.summary, v.last_seen_ms, {now_ms_expr} AS emitted_at_ms
FROM (
    SELECT equipment_id, site, equipment_type,
           SCORE_HOPS(equipment_id, site, equipment_type, hop_end, sensors, window_starts, counts, avgs, stddevs,
                      mins, maxs, rule_hits, zratios) AS v
    FROM machine_hops
)
WHERE v.emit
