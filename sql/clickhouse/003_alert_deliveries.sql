-- Notification relay (alerting): one row per delivery attempt outcome -- which alert, to whom,
-- delivered / retry / dead_letter, the provider's answer and how long it took. Shipped in batches from the
-- relay's SQLite attempt log by alerting/delivery_log.py.
-- Placeholders are filled by connectors.clickhouse.apply_schema from settings; statements end with
-- ';' at the end of a line. Every statement is idempotent.
-- The table is named by settings.clickhouse.deliveries_table. The stack applies it with the rest of the schema
-- (the relay's own ClickHouse identity may only insert into it).

CREATE DATABASE IF NOT EXISTS {database};

-- The relay marks attempts shipped after ClickHouse accepted them, so a crash in between ships them
-- again: ReplacingMergeTree collapses a re-shipped attempt (same receiver, time, delivery_id, attempt).
CREATE TABLE IF NOT EXISTS {database}.{deliveries_table}
(
    time          DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    receiver      LowCardinality(String),   -- slack | sms | email
    recipient     String,                   -- on-call name (receivers.yaml), not the phone number or address
    fingerprint   String,                   -- Alertmanager's alert fingerprint
    alertname     LowCardinality(String),
    equipment_id  String,
    site          LowCardinality(String),
    severity      LowCardinality(String),
    alert_status  LowCardinality(String),   -- firing | resolved
    status        LowCardinality(String),   -- delivered | retry | dead_letter
    attempt       UInt16,
    http_status   UInt16,                   -- HTTP status (SMTP reply code for e-mail); 0 = no answer
    error         String CODEC(ZSTD(3)),
    latency_ms    Float64,
    delivery_id   UInt64,                   -- the relay's outbox id (vigil alerts dead-letters / resend)
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
-- Daily partitions: TTL drops whole days, and "last hour" queries prune partitions.
PARTITION BY toDate(time)
ORDER BY (receiver, time, delivery_id, attempt)
TTL toDateTime(time) + INTERVAL {window_ttl_days} DAY
SETTINGS ttl_only_drop_parts = 1;
