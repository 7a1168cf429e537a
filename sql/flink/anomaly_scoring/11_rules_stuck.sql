-- How many of the last {n} windows of a series were flat (one view per distinct stuck_windows N:
-- Flink computes only one OVER frame per SELECT). Keeps {n} rows per series in state.
CREATE TEMPORARY VIEW {output_view} AS
SELECT
    *,
    SUM(flat) OVER (
        PARTITION BY equipment_id, sensor ORDER BY rowtime ROWS BETWEEN {n_preceding} PRECEDING AND CURRENT ROW
    ) AS flat_last_{n}
FROM {input_view}
