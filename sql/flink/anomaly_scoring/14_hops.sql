-- Per machine, its last {history_windows} windows side by side (a HOP window sliding by one window):
-- the current window and its history, every sensor's statistics and rule results as parallel arrays
-- (all ARRAY_AGGs of one group see the rows in the same order). History is window state, so it is
-- checkpointed with the job. A hop whose newest window is empty is how a silent machine shows up.
CREATE TEMPORARY VIEW machine_hops AS
SELECT
    equipment_id,
    site,
    equipment_type,
    window_end AS hop_end,
    ARRAY_AGG(sensor) AS sensors,
    ARRAY_AGG(window_start_ms) AS window_starts,
    ARRAY_AGG(`count`) AS counts,
    ARRAY_AGG(`avg`) AS avgs,
    ARRAY_AGG(`stddev`) AS stddevs,
    ARRAY_AGG(`min`) AS mins,
    ARRAY_AGG(`max`) AS maxs,
    ARRAY_AGG(rule_hits) AS rule_hits,
    ARRAY_AGG(zratio) AS zratios
FROM TABLE(HOP(TABLE window_rule_results, DESCRIPTOR(rowtime), INTERVAL '{window_size_s}' SECOND,
               INTERVAL '{hop_size_s}' SECOND))
GROUP BY equipment_id, site, equipment_type, window_start, window_end
