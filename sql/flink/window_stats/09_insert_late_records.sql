-- Late records go to the dead-letter topic whole, with the reason: counted, never dropped.
INSERT INTO late_dead_letter
SELECT
    equipment_id,
    'flink' AS `source`,
    'late_record' AS reason,
    CONCAT('window starting at ', CAST(TO_TIMESTAMP_LTZ(chunk_start_ms, 3) AS STRING),
           ' UTC had already closed; watermark was ', CAST(CURRENT_WATERMARK(rowtime) AS STRING),
           ' UTC (allowed lateness {lateness_s} s)') AS detail,
    {now_ms_expr} AS received_at_ms,
    JSON_OBJECT(
        'equipment_id' VALUE equipment_id, 'site' VALUE site, 'equipment_type' VALUE equipment_type,
        'gateway_id' VALUE gateway_id, 'sequence' VALUE `sequence`, 'chunk_start_ms' VALUE chunk_start_ms,
        'event_time_ms' VALUE event_time_ms, 'ingested_at_ms' VALUE ingested_at_ms,
        'kafka_partition' VALUE kafka_partition, 'kafka_offset' VALUE kafka_offset,
        'sensors' VALUE sensors
    ) AS payload
FROM telemetry_classified
WHERE is_late AND equipment_id <> ''  -- progress markers (edge/progress.py) carry no data
