-- One row per on-time sample. The left side's rowtime stays a time attribute through UNNEST.
CREATE TEMPORARY VIEW samples_on_time AS
SELECT t.equipment_id, t.site, t.equipment_type, t.chunk_start_ms, t.rowtime, s.sensor, s.unit, x.v
FROM telemetry_classified AS t
CROSS JOIN UNNEST(t.sensors) AS s (sensor, unit, ts, vs)
CROSS JOIN UNNEST(s.vs) AS x (v)
WHERE NOT t.is_late
