-- Only anomalous windows start or extend an episode.
CREATE TEMPORARY VIEW anomalies_flagged AS
SELECT * FROM anomalies_in WHERE is_anomaly
