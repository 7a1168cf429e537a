-- Open episodes, step 1: mark the anomalous windows that start an episode (see 07_open_episodes.sql).
CREATE TEMPORARY VIEW anomalies_flagged_marked AS
SELECT *,
    CASE WHEN window_start_ms - COALESCE(LAG(window_start_ms) OVER (PARTITION BY equipment_id ORDER BY rowtime), 0)
              > {episode_gap_ms} THEN 1 ELSE 0 END AS starts_episode
FROM anomalies_flagged
