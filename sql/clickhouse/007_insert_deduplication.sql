-- The tables the ClickHouse sink writes remember the last 1,000 inserted blocks' de-duplication tokens: an
-- insert that ClickHouse committed but whose answer never reached the sink (the server crashed, the network
-- dropped it) is retried with the same token (the batch's Kafka offsets) and written once, so even a
-- FINAL-free read sees one row. Set here for tables created before too. Every statement is idempotent.
ALTER TABLE {database}.{window_stats_table} MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {database}.{anomalies_table} MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {database}.{insights_table} MODIFY SETTING non_replicated_deduplication_window = 1000;
