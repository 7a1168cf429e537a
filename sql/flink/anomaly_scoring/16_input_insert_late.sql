-- Late window statistics go to the dead-letter topic whole, with the reason: counted, never dropped.
INSERT INTO late_dead_letter
SELECT
    equipment_id,
    'flink-scoring' AS `source`,
    'late_window_stats' AS reason,
    CONCAT('window starting at ', CAST(rowtime AS STRING), ' UTC was already scored; watermark was ',
           CAST(CURRENT_WATERMARK(rowtime) AS STRING), ' UTC (scoring.out_of_order_windows = ',
           '{scoring_out_of_order_windows})') AS detail,
    {now_ms_expr} AS received_at_ms,
    JSON_OBJECT(
        'equipment_id' VALUE equipment_id, 'site' VALUE site, 'equipment_type' VALUE equipment_type,
        'sensor' VALUE sensor, 'unit' VALUE unit, 'window_start_ms' VALUE window_start_ms,
        'window_end_ms' VALUE window_end_ms, 'count' VALUE `count`, 'avg' VALUE `avg`,
        'stddev' VALUE `stddev`, 'min' VALUE `min`, 'max' VALUE `max`, 'emitted_at_ms' VALUE emitted_at_ms
    ) AS payload
FROM window_stats_classified
WHERE is_late AND `count` > 0  -- a late progress marker carries no window
