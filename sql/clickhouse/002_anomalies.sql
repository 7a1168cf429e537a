-- Cold path: one verdict per scored (machine, 5-s window) from the anomalies topic -- normal windows
-- included -- plus `dead_machine` verdicts when a machine falls silent (vigil.contracts.ANOMALY_JSON_SCHEMA).
-- Placeholders are filled by connectors.clickhouse.apply_schema from settings; statements end with
-- ';' at the end of a line. Every statement is idempotent.

-- The Flink Kafka sink is at-least-once locally and the ClickHouse sink commits offsets after the
-- insert, so a verdict can arrive twice. As for window stats, ReplacingMergeTree keyed by
-- (equipment_id, window_start) keeps the most recently *computed* verdict (version = emitted_at).
-- Reads must use FINAL (or the view below) to see exactly one row per key before merges run.
CREATE TABLE IF NOT EXISTS {database}.{anomalies_table}
(
    equipment_id     String,
    site             LowCardinality(String),
    equipment_type   LowCardinality(String),
    window_start     DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    window_end       DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    kind             LowCardinality(String),  -- 'window' | 'dead_machine'
    -- 0/1; operations/training/detectors.py excludes rows with is_anomaly != 0 from training data.
    is_anomaly       UInt8,
    severity         LowCardinality(String),  -- 'normal' | 'warning' | 'critical'
    -- Detector scores normalised to their own threshold (1 = at the alarm limit); score is their max.
    -- scores has an entry per detector that scored the window (and 'rules'); none for one that did not
    -- (no live model, incomplete window, warm-up). A new detector adds keys, never columns.
    score            Float64,
    scores           Map(LowCardinality(String), Float64),
    detectors        Array(String),
    rule_hits        Array(String),
    top_sensors      Array(String),
    dead_sensors     Array(String),
    model_versions   LowCardinality(String),
    summary          String CODEC(ZSTD(3)),
    last_seen        DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    emitted_at       DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(emitted_at)
-- Daily partitions: TTL drops whole days, and a per-machine time-range query prunes partitions.
PARTITION BY toDate(window_start)
-- A machine's verdicts are contiguous on disk; this is also the dedup key.
ORDER BY (equipment_id, window_start)
TTL toDateTime(window_start) + INTERVAL {window_ttl_days} DAY
SETTINGS ttl_only_drop_parts = 1;

-- A table created before scores became a map gets the column (its old per-detector columns stay, unused).
ALTER TABLE {database}.{anomalies_table} ADD COLUMN IF NOT EXISTS scores Map(LowCardinality(String), Float64) AFTER score;

-- Exactly one row per (equipment_id, window_start), whether or not parts have merged.
CREATE OR REPLACE VIEW {database}.{anomalies_view} AS
SELECT
    equipment_id, site, equipment_type, window_start, window_end, kind, is_anomaly, severity,
    score, scores, detectors, rule_hits, top_sensors, dead_sensors,
    model_versions, summary, last_seen, emitted_at, inserted_at
FROM {database}.{anomalies_table} FINAL;
