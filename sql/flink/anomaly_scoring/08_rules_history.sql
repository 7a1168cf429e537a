-- Per series, in event-time order: the step from the previous window's average (LAG takes no frame,
-- so it is its own OVER) and the z-score against the EWMA baseline kept in keyed state (an unbounded
-- ROWS frame needs no retraction: O(1) state per series). Each OVER result feeds an expression on
-- purpose: a bare rename would be optimised away, and chained OVERs then clash on their internal
-- column names (Flink: "Field names must be unique. Found duplicates: [w0$o0]").
CREATE TEMPORARY VIEW window_stats_history AS
SELECT
    *,
    EWMA_ZSCORE(`avg`, CAST({ewma_alpha} AS DOUBLE), {ewma_warmup}) OVER (
        PARTITION BY equipment_id, sensor ORDER BY rowtime ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS zscore,
    ABS(EWMA_ZSCORE(`avg`, CAST({ewma_alpha} AS DOUBLE), {ewma_warmup}) OVER (
        PARTITION BY equipment_id, sensor ORDER BY rowtime ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    )) AS abs_zscore
FROM (
    SELECT *, ABS(`avg` - LAG(`avg`) OVER (PARTITION BY equipment_id, sensor ORDER BY rowtime)) AS step
    FROM window_stats_limits
)
