-- Known faults: the simulator's injected faults (ground truth) and faults a maintenance team confirmed
-- (work orders), loaded with `vigil labels import`. `vigil train --agents --source clickhouse` labels the
-- anomaly episodes of a time range with them to train the diagnostic classifier.
-- Placeholders are filled by connectors.clickhouse.apply_schema from settings; statements end with
-- ';' at the end of a line. Every statement is idempotent.

-- Importing the same file twice replaces, never doubles: label_id is a digest of the label's content.
CREATE TABLE IF NOT EXISTS {database}.{fault_labels_table}
(
    label_id       String,                      -- digest of (equipment_id, fault_type, start, end, sensors)
    equipment_id   String,
    site           LowCardinality(String),
    equipment_type LowCardinality(String),
    fault_type     LowCardinality(String),      -- as the source named it (simulator FaultType or a class)
    diagnosis      LowCardinality(String),      -- the diagnostic agent's class it trains (agents.diagnostic)
    sensors        Array(String),
    start          DateTime64(3, 'UTC'),
    end            DateTime64(3, 'UTC'),
    source         LowCardinality(String),      -- simulator | work_order | ...
    recorded_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(recorded_at)
PARTITION BY toYYYYMM(start)
ORDER BY (equipment_id, start, label_id);
