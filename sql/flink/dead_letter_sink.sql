-- Records that arrived after their window closed (beyond the allowed lateness): kept, with the reason.
CREATE TABLE late_dead_letter (
    equipment_id STRING,
    `source` STRING,
    reason STRING,
    detail STRING,
    received_at_ms BIGINT,
    payload STRING
) WITH (
    'connector' = 'kafka',
    'topic' = '{dead_letter_topic}',
    {kafka_properties}
    'key.format' = 'raw',
    'key.fields' = 'equipment_id',
    'value.format' = 'json',
    'value.fields-include' = 'ALL',
    'sink.delivery-guarantee' = '{delivery_guarantee}',
    'sink.transactional-id-prefix' = '{consumer_group}-late'
)
