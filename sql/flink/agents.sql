-- Every closed episode through every agent (RUN_AGENTS, udfs/agents_udtf.py, closed = TRUE): one row per insight.
INSERT INTO insights_out
SELECT
    i.equipment_id, e.site, e.equipment_type, i.agent, i.kind, i.episode_id,
    e.start_ms AS window_start_ms, e.end_ms AS window_end_ms, TRUE AS closed,
    i.title, i.severity, i.confidence, i.fault_type, i.sensors, i.details,
    {now_ms_expr} AS emitted_at_ms
FROM episodes AS e,
LATERAL TABLE(RUN_AGENTS(e.equipment_id, e.site, e.equipment_type, e.start_ms, e.end_ms, TRUE))
    AS i(equipment_id, agent, kind, episode_id, title, severity, confidence, fault_type, sensors, details)
