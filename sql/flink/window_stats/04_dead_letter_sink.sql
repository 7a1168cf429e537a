-- Records that arrived after their window closed (beyond the allowed lateness): kept, with the reason.
CREATE TABLE late_dead_letter (
    equipment_id STRING,
    `source` STRING,
    reason STRING,
    detail STRING,
    received_at_ms BIGINT,
    payload STRING
) WITH (
    {dead_letter_sink_options}
)
