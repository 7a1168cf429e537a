-- Open episodes, step 2: number each machine's episodes (see 07_open_episodes.sql).
CREATE TEMPORARY VIEW anomalies_flagged_numbered AS
SELECT *,
    SUM(starts_episode) OVER (PARTITION BY equipment_id ORDER BY rowtime
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS episode_no
FROM anomalies_flagged_marked
