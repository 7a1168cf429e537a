-- Each machine's newest verdict, for the console's fleet view: reading 10,000 rows instead of scanning a
-- time range of `anomalies` (whose sort key starts with the machine). Filled by a materialized view on
-- every insert into `anomalies`; ReplacingMergeTree keeps the newest window per machine (version =
-- window_end), so a late re-delivery of an older verdict never replaces a newer one. Read with FINAL.
-- Placeholders are filled by connectors.clickhouse.apply_schema. Every statement is idempotent.

CREATE TABLE IF NOT EXISTS {database}.machine_state
(
    equipment_id   String,
    site           LowCardinality(String),
    equipment_type LowCardinality(String),
    window_end     DateTime64(3, 'UTC'),
    kind           LowCardinality(String),
    is_anomaly     UInt8,
    severity       LowCardinality(String),
    score          Float64,
    detectors      Array(String),
    top_sensors    Array(String),
    dead_sensors   Array(String),
    summary        String,
    last_seen      DateTime64(3, 'UTC'),
    emitted_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(window_end)
-- One row per machine (also the dedup key): a one-machine lookup reads one granule; the fleet view reads all.
ORDER BY equipment_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.machine_state_mv TO {database}.machine_state AS
SELECT
    equipment_id, site, equipment_type, window_end, kind, is_anomaly, severity, score, detectors,
    top_sensors, dead_sensors, summary, last_seen, emitted_at
FROM {database}.{anomalies_table};
