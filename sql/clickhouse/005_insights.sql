-- The agents' insights (vigil.contracts.INSIGHT_JSON_SCHEMA), from the insights topic: one row per
-- (episode, agent, kind) -- diagnosis, root cause, shared cause, maintenance, and plug-in agents' own kinds.
-- Placeholders are filled by connectors.clickhouse.apply_schema from settings; statements end with
-- ';' at the end of a line. Every statement is idempotent.

-- An episode analysed again (a replay, an at-least-once retry) replaces its insight: the newest
-- emitted_at wins. A preliminary analysis (closed = 0, made while the episode was going on) and the closed
-- episode's are kept apart; the view below shows the closed one as soon as it exists, whatever the order
-- they arrived in (a catch-up after an outage can emit both at once).
CREATE TABLE IF NOT EXISTS {database}.{insights_table}
(
    equipment_id   String,
    site           LowCardinality(String),
    equipment_type LowCardinality(String),
    agent          LowCardinality(String),
    kind           LowCardinality(String),
    episode_id     String,                      -- <equipment_id>@<first anomalous window start, ms>
    window_start   DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),   -- the episode's first anomalous window
    window_end     DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),   -- ... and the end of its last one
    closed         UInt8,                       -- 0: analysed while still going on (preliminary)
    title          String CODEC(ZSTD(3)),       -- the line an alert carries
    severity       LowCardinality(String),      -- info | warning | critical
    confidence     Float64,
    fault_type     LowCardinality(String),
    sensors        Array(String),
    details        String CODEC(ZSTD(3)),       -- JSON: ranking, health index, time to failure, actions, ...
    emitted_at     DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toDate(window_start)
-- A machine's insights are contiguous on disk (the Equipment page reads one machine); also the dedup key.
ORDER BY (equipment_id, episode_id, agent, kind, closed)
TTL toDateTime(window_start) + INTERVAL {window_ttl_days} DAY
SETTINGS ttl_only_drop_parts = 1;

CREATE OR REPLACE VIEW {database}.{insights_table}_latest AS
SELECT * FROM {database}.{insights_table} FINAL
ORDER BY equipment_id, episode_id, agent, kind, closed DESC
LIMIT 1 BY equipment_id, episode_id, agent, kind;
