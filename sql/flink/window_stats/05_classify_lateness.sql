-- A record is late when the watermark already passed the end of its window: the window
-- operator would drop it. Deciding it here, once, sends every record down exactly one branch.
CREATE TEMPORARY VIEW telemetry_classified AS
SELECT
    *,
    COALESCE(TO_TIMESTAMP_LTZ(chunk_start_ms + {window_size_ms} - 1, 3) <= CURRENT_WATERMARK(rowtime), FALSE)
        AS is_late
FROM telemetry
