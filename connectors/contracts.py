"""The record contracts between pipeline stages, defined once for every reader."""

from __future__ import annotations

import pyarrow as pa

# Window statistics on the window-stats topic, one JSON record per (machine, sensor, window), as
# written by the Flink job (sql/flink/window_stats_sink.sql). Every field is required.
WINDOW_STATS_LABELS = ("equipment_id", "site", "equipment_type", "sensor", "unit")
WINDOW_STATS_VALUES = ("avg", "stddev", "min", "max", "count")
WINDOW_STATS_JSON_SCHEMA = pa.schema(
    [(name, pa.string()) for name in WINDOW_STATS_LABELS]
    + [("window_start_ms", pa.int64()), ("window_end_ms", pa.int64()), ("count", pa.int64())]
    + [(name, pa.float64()) for name in ("avg", "stddev", "min", "max")]
    + [("emitted_at_ms", pa.int64())]
)
