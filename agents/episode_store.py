"""What an agent needs about an episode, read from the cold path (ClickHouse).

The agents job learns from the anomalies topic THAT a machine had an episode (a Flink session window of its
anomalous verdicts); the evidence -- every sensor's window statistics from the baseline before the episode
to its end, and the verdicts' detectors and sensors -- is already in ClickHouse by the time the episode
closes (the sink writes within seconds; an episode closes ``gap_windows`` windows after its last anomalous
window). Reading it there keeps minutes of every machine's statistics out of Flink state.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from clickhouse_connect.driver.client import Client

from agents.base import STAT_COLUMNS, Episode
from connectors.clickhouse import WINDOW_STATS_VIEW
from vigil.settings import Settings

_SINCE = "window_start >= fromUnixTimestamp64Milli({{{p}:Int64}})"
_BEFORE = "window_start < fromUnixTimestamp64Milli({t:Int64})"
VERDICT_COLUMNS = (
    "window_start_ms",
    "kind",
    "severity",
    "score",
    "detectors",
    "rule_hits",
    "top_sensors",
    "dead_sensors",
)


class EpisodeStore:
    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings = settings
        self.client = client
        self.window_ms = settings.window.size_ms
        self.baseline_windows = settings.agents.baseline_windows
        self._lines = _lines(settings.edge.equipment_registry)

    def episode(
        self, equipment_id: str, site: str, equipment_type: str, start_ms: int, end_ms: int, closed: bool = True
    ) -> Episode:
        """The episode [start_ms, end_ms) of one machine with its baseline statistics and verdicts; ``closed``
        False: it is still going on (its analysis is preliminary)."""
        params = {"e": equipment_id, "s": start_ms - self.baseline_windows * self.window_ms, "a": start_ms, "t": end_ms}
        stats = self.client.query_df(
            f"SELECT toUnixTimestamp64Milli(window_start) AS window_start_ms, sensor, toFloat64(count) AS n, "
            f"avg, stddev, min, max FROM {WINDOW_STATS_VIEW} WHERE equipment_id = {{e:String}} "
            f"AND {_SINCE.format(p='s')} AND {_BEFORE} ORDER BY sensor, window_start",
            parameters=params,
        )
        verdicts = self.client.query_df(
            "SELECT toUnixTimestamp64Milli(window_start) AS window_start_ms, kind, severity, score, detectors, "
            f"rule_hits, top_sensors, dead_sensors FROM {self.settings.clickhouse.anomalies_view} "
            f"WHERE equipment_id = {{e:String}} AND is_anomaly = 1 AND {_SINCE.format(p='a')} AND {_BEFORE} "
            "ORDER BY window_start",
            parameters=params,
        )
        if stats.empty:  # an empty result has no columns
            stats = pd.DataFrame(columns=list(STAT_COLUMNS))
        stats = stats.rename(columns={"n": "count"})
        if verdicts.empty:
            verdicts = pd.DataFrame(columns=list(VERDICT_COLUMNS))
        return Episode(
            equipment_id,
            site,
            equipment_type,
            int(start_ms),
            int(end_ms),
            self.window_ms,
            stats[list(STAT_COLUMNS)],
            verdicts,
            self._lines.get(equipment_id, ""),
            closed,
        )

    def line_of(self, equipment_id: str) -> str:
        return self._lines.get(equipment_id, "")

    def neighbours(self, equipment_id: str, site: str, start_ms: int, window_ms: int, gap_windows: int) -> pd.DataFrame:
        """Other machines of ``site`` whose anomalous episode began within ``window_ms`` of ``start_ms``:
        ``equipment_id, first_ms, top_sensor`` (the first anomalous window's top sensor).

        An episode begins at an anomalous window with none in the ``gap_windows`` windows before it; a
        machine anomalous since before the range is left out (its episode began earlier). Read from the
        verdicts, which the sink writes seconds after each window, long before the episodes close."""
        lead = (gap_windows + 1) * self.window_ms
        frame = self.client.query_df(
            "SELECT equipment_id, toUnixTimestamp64Milli(min(window_start)) AS first_ms, "
            "argMin(top_sensors, window_start) AS top "
            f"FROM {self.settings.clickhouse.anomalies_table} "
            "WHERE site = {site:String} AND equipment_id != {e:String} AND is_anomaly = 1 "
            "AND window_start >= fromUnixTimestamp64Milli({lo:Int64}) "
            "AND window_start <= fromUnixTimestamp64Milli({hi:Int64}) GROUP BY equipment_id",
            parameters={"site": site, "e": equipment_id, "lo": start_ms - window_ms - lead, "hi": start_ms + window_ms},
        )
        if frame.empty:
            return pd.DataFrame({"equipment_id": [], "first_ms": [], "top_sensor": []})
        frame = frame[frame["first_ms"] >= start_ms - window_ms]
        top = frame["top"].map(lambda sensors: str(sensors[0]) if len(sensors) else "")
        return pd.DataFrame(
            {
                "equipment_id": frame["equipment_id"].to_numpy(),
                "first_ms": frame["first_ms"].to_numpy(),
                "top_sensor": top.to_numpy(),
            }
        )


def _lines(registry: Path | None) -> dict[str, str]:
    """equipment_id -> line from the edge's equipment registry CSV, when one is configured."""
    if registry is None or not Path(registry).exists():
        return {}
    frame = pd.read_csv(registry, dtype=str)
    if "line" not in frame:
        return {}
    return dict(zip(frame["equipment_id"], frame["line"].fillna(""), strict=True))
