-- Cold path: one row per (equipment, sensor, 5-s window) from the window-stats topic.
-- Placeholders ({database}, {window_stats_table}, ...) are filled by connectors.clickhouse.apply_schema
-- from settings; statements end with ';' at the end of a line. Every statement is idempotent.

CREATE DATABASE IF NOT EXISTS {database};

-- The sink is at-least-once (offsets are committed after the insert), and the Flink job may
-- re-emit a window after recovery, so the same key can arrive more than once. ReplacingMergeTree
-- collapses rows with the same ORDER BY key; the version column is emitted_at so the most
-- recently *computed* result wins no matter in which order replays reach the table (inserted_at
-- would let a late re-delivery of an older record override a newer one).
-- Reads must use FINAL (or the view below) to see exactly one row per key before merges run.
CREATE TABLE IF NOT EXISTS {database}.{window_stats_table}
(
    equipment_id   String,
    site           LowCardinality(String),
    equipment_type LowCardinality(String),
    sensor         LowCardinality(String),
    unit           LowCardinality(String),
    window_start   DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    window_end     DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    count          UInt32,
    avg            Float64,
    stddev         Float64,
    min            Float64,
    max            Float64,
    emitted_at     DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(emitted_at)
-- Daily partitions: TTL drops whole days, and a per-machine time-range query prunes partitions.
PARTITION BY toDate(window_start)
-- Per-machine, per-sensor time ranges are contiguous on disk; this is also the dedup key.
ORDER BY (equipment_id, sensor, window_start)
TTL toDateTime(window_start) + INTERVAL {window_ttl_days} DAY
SETTINGS ttl_only_drop_parts = 1;

-- Exactly one row per (equipment_id, sensor, window_start), whether or not parts have merged.
-- Filters on the view are pushed down into the FINAL read, so range queries stay cheap.
CREATE OR REPLACE VIEW {database}.{window_stats_view} AS
SELECT
    equipment_id, site, equipment_type, sensor, unit,
    window_start, window_end, count, avg, stddev, min, max, emitted_at, inserted_at
FROM {database}.{window_stats_table} FINAL;
