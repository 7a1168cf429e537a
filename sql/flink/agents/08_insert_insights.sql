-- Episodes through every agent (RUN_AGENTS, udfs/agents_udtf.py): one row per insight. Rendered twice by
-- jobs/agents.py: closed episodes ({episodes_view} = episodes, {closed} = TRUE) and, with agents.early_windows,
-- open ones as they stand (open_episodes, FALSE): preliminary insights, replaced by the closed episode's
-- under the same episode_id.
INSERT INTO insights_out
SELECT
    i.equipment_id, e.site, e.equipment_type, i.agent, i.kind, i.episode_id,
    e.start_ms AS window_start_ms, e.end_ms AS window_end_ms, {closed} AS closed,
    i.title, i.severity, i.confidence, i.fault_type, i.sensors, i.details,
    {now_ms_expr} AS emitted_at_ms
FROM {episodes_view} AS e,
LATERAL TABLE(RUN_AGENTS(e.equipment_id, e.site, e.equipment_type, e.start_ms, e.end_ms, {closed}))
    AS i(equipment_id, agent, kind, episode_id, title, severity, confidence, fault_type, sensors, details)
