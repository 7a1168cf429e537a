-- Anomaly episodes: a machine's anomalous windows whose starts are at most {gap_windows} normal windows
-- apart form one session (agents/episodes.py merges the same way offline). A session is emitted once the
-- watermark passed its last anomalous window by the gap: the episode is over.
CREATE TEMPORARY VIEW episodes AS
SELECT
    equipment_id,
    MAX(site) AS site,
    MAX(equipment_type) AS equipment_type,
    MIN(window_start_ms) AS start_ms,
    MAX(window_end_ms) AS end_ms,
    COUNT(*) AS windows
FROM TABLE(
    SESSION(TABLE anomalies_flagged PARTITION BY equipment_id, DESCRIPTOR(rowtime), INTERVAL '{session_gap_s}' SECOND)
)
GROUP BY equipment_id, window_start, window_end
