"""Anomaly episodes: a machine's consecutive anomalous windows, merged, with the statistics around them.

Why merge: one bearing going bad flags dozens of 5-s windows in a row (and, near the alarm limit, a few
normal ones in between); the maintenance team wants one diagnosis for it, not fifty. Windows at most
``gap_windows`` apart join one episode. Vectorised over the whole verdict frame: sort, mark where a new
episode starts, cumulative-sum the marks; Python only loops over episodes to slice their data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from agents.base import STAT_COLUMNS, Episode

DEFAULT_GAP_WINDOWS = 2  # up to 2 normal windows inside an episode keep it one
DEFAULT_BASELINE_WINDOWS = 60  # 5 minutes of 5-s windows before the episode: what "normal" looked like


def build_episodes(
    verdicts: pd.DataFrame,
    stats: pd.DataFrame,
    window_ms: int,
    gap_windows: int = DEFAULT_GAP_WINDOWS,
    baseline_windows: int = DEFAULT_BASELINE_WINDOWS,
    machines: pd.DataFrame | None = None,
    now_ms: int | None = None,
    min_windows: int = 1,
) -> list[Episode]:
    """Episodes from verdicts (``equipment_id, window_start_ms, is_anomaly`` and the scorer's columns) and
    window statistics (``equipment_id`` + :data:`STAT_COLUMNS`).

    ``machines`` (equipment_id, site, equipment_type[, line]) fills in what the verdicts lack. With
    ``now_ms``, an episode whose last anomalous window is less than ``gap_windows`` windows old is marked
    open (it may still grow). Episodes shorter than ``min_windows`` anomalous windows are left out."""
    if verdicts.empty:
        return []
    flagged = verdicts.loc[verdicts["is_anomaly"].to_numpy(bool)]
    if machines is not None:
        extra = [c for c in ("site", "equipment_type", "line") if c in machines.columns and c not in flagged.columns]
        if extra:
            flagged = flagged.merge(machines[["equipment_id", *extra]], on="equipment_id", how="left")
    flagged = flagged.sort_values(["equipment_id", "window_start_ms"], kind="stable").reset_index(drop=True)
    if flagged.empty:
        return []
    ids = flagged["equipment_id"].to_numpy()
    starts = flagged["window_start_ms"].to_numpy(np.int64)
    new = np.ones(len(flagged), dtype=bool)
    new[1:] = (ids[1:] != ids[:-1]) | (starts[1:] - starts[:-1] > (gap_windows + 1) * window_ms)
    bounds = np.flatnonzero(new)
    ends = np.append(bounds[1:], len(flagged))

    by_machine = _index_stats(stats)
    out: list[Episode] = []
    for lo, hi in zip(bounds, ends, strict=True):
        if hi - lo < min_windows:
            continue
        first, last = int(starts[lo]), int(starts[hi - 1])
        machine = str(ids[lo])
        rows = flagged.iloc[lo:hi]
        head = rows.iloc[0]
        out.append(
            Episode(
                equipment_id=machine,
                site=str(head.get("site", "")),
                equipment_type=str(head.get("equipment_type", "")),
                start_ms=first,
                end_ms=last + window_ms,
                window_ms=window_ms,
                stats=_slice(by_machine.get(machine), first - baseline_windows * window_ms, last + window_ms),
                verdicts=rows.reset_index(drop=True),
                line=str(head.get("line", "") or ""),
                closed=now_ms is None or last + window_ms <= now_ms - gap_windows * window_ms,
            )
        )
    return out


def _index_stats(stats: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each machine's statistics sorted by window (one groupby for all episodes)."""
    if stats.empty:
        return {}
    ordered = stats.sort_values(["equipment_id", "window_start_ms"], kind="stable")
    groups = ordered.groupby("equipment_id", sort=False)
    return {str(k): g[list(STAT_COLUMNS)].reset_index(drop=True) for k, g in groups}


def _slice(frame: pd.DataFrame | None, lo_ms: int, hi_ms: int) -> pd.DataFrame:
    if frame is None:
        return pd.DataFrame(columns=list(STAT_COLUMNS))
    t = frame["window_start_ms"].to_numpy(np.int64)
    a, b = np.searchsorted(t, lo_ms, side="left"), np.searchsorted(t, hi_ms, side="left")
    return frame.iloc[a:b].reset_index(drop=True)


def episodes_frame(episodes: Sequence[Episode]) -> pd.DataFrame:
    """One row per episode: what the evaluation matches against ground truth."""
    return pd.DataFrame(
        {
            "episode_id": [e.episode_id for e in episodes],
            "equipment_id": [e.equipment_id for e in episodes],
            "site": [e.site for e in episodes],
            "line": [e.line for e in episodes],
            "equipment_type": [e.equipment_type for e in episodes],
            "start_ms": np.array([e.start_ms for e in episodes], dtype=np.int64),
            "end_ms": np.array([e.end_ms for e in episodes], dtype=np.int64),
            "windows": np.array([len(e.verdicts) for e in episodes], dtype=np.int64),
        }
    )
