"""NAB (Numenta Anomaly Benchmark) scoring, written from NAB's published rules.

Why our own: `vigil evaluate --dataset nab` must score any folder in NAB's layout with the benchmark's
own metric, without depending on NAB's (Python 2-era) code. The rules, as NAB publishes them:

- Each labelled anomaly window is a run of rows ``[left, right]`` (inclusive) of width ``w``.
- Inside a window only the FIRST detection counts. Its reward is ``A_TP * S(p) / S(-1)`` with
  ``p = -(right - i + 1) / w`` (``-1`` at the window start, ``-1/w`` at its last row) and the scaled
  sigmoid ``S(p) = 2 / (1 + exp(5 p)) - 1`` (``S(p) = -1`` for ``p > 3``). Later detections in the
  same window neither add nor cost.
- A detection outside every window is a false positive costing ``A_FP * S(p)`` (``S`` is negative
  there) with ``p = (i - right_prev) / (w_prev - 1)`` measured from the preceding window's last row,
  or the full ``A_FP * -1`` if no window precedes it. So an FP just after a window costs little.
- Each window without any detection costs ``-A_FN``.
- The first ``min(floor(0.15 n), 0.15 * 5000)`` rows of a file are probationary: detections there
  are ignored, and a window lying entirely in them is not scored.
- Raw per-file scores are summed over the corpus and normalised so that the null detector (never
  alarms: ``-A_FN`` per window) scores 0 and the perfect detector (``A_TP`` per window) scores 100.

Counts reported in :class:`NabScore` are per window (tp = windows detected, fn = windows missed) and
per row for false positives (fp = alarmed scorable rows outside every window).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PROBATION_PERCENT = 0.15
# NAB caps the probationary period at 15 % of 5000 rows.
PROBATION_CAP_ROWS = 5000
WINDOWS_FILE = "combined_windows.json"
PROFILES_FILE = "profiles.json"
# Short names used on the command line -> the keys NAB's profiles.json uses.
PROFILE_ALIASES = {"reward_low_FP": "reward_low_FP_rate", "reward_low_FN": "reward_low_FN_rate"}


@dataclass(frozen=True)
class NabProfile:
    """One application profile's cost matrix (NAB ignores the TN weight)."""

    name: str
    tp: float
    fp: float
    fn: float


# NAB's published profiles, used when a folder has no profiles.json.
DEFAULT_PROFILES = {
    "standard": NabProfile("standard", tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": NabProfile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": NabProfile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}


@dataclass
class NabFile:
    """One data file with its anomaly windows as inclusive row-index ranges."""

    name: str  # relative path as in combined_windows.json, e.g. "realAWSCloudwatch/x.csv"
    timestamps: np.ndarray  # datetime64[ns], as read from the file, in file order
    values: np.ndarray  # float64
    windows: list[tuple[int, int]]
    raw_timestamps: list[str] = field(default_factory=list, repr=False)  # verbatim, for result writers

    @property
    def probation(self) -> int:
        """Number of leading rows that are never scored."""
        n = len(self.values)
        return int(min(math.floor(PROBATION_PERCENT * n), PROBATION_PERCENT * PROBATION_CAP_ROWS))

    @property
    def labels(self) -> np.ndarray:
        """1 inside a window, else 0 (per row)."""
        out = np.zeros(len(self.values), dtype=np.int8)
        for left, right in self.windows:
            out[left : right + 1] = 1
        return out

    def scored_windows(self) -> list[tuple[int, int]]:
        """Windows that reach past the probationary period, clipped to the scorable rows."""
        p = self.probation
        return [(max(left, p), right) for left, right in self.windows if right >= p]


@dataclass(frozen=True)
class NabScore:
    """A corpus score under one profile."""

    normalized: float
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int
    profile: str = "standard"


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's S(p) = 2*sigmoid(-5p) - 1, forced to -1 far (p > 3) after a window."""
    p = np.asarray(position, dtype=np.float64)
    return np.where(p > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * p)) - 1.0)


MAX_TP = float(scaled_sigmoid(-1.0))


def load_profiles(data_dir: Path | str | None = None, path: Path | str | None = None) -> dict[str, NabProfile]:
    """Profiles from ``profiles.json`` (in ``data_dir`` or at ``path``), else NAB's published ones."""
    src = Path(path) if path is not None else (Path(data_dir) / PROFILES_FILE if data_dir is not None else None)
    if src is None or not src.exists():
        return dict(DEFAULT_PROFILES)
    raw = json.loads(src.read_text())
    out = {}
    for name, body in raw.items():
        try:
            cm = body["CostMatrix"]
            out[name] = NabProfile(name, tp=float(cm["tpWeight"]), fp=float(cm["fpWeight"]), fn=float(cm["fnWeight"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{src}: profile {name!r} needs CostMatrix with tpWeight/fpWeight/fnWeight ({exc!r})"
            ) from exc
    return out


def get_profile(profiles: Mapping[str, NabProfile], name: str) -> NabProfile:
    """Look a profile up by NAB's name or its short alias (reward_low_FP / reward_low_FN)."""
    key = PROFILE_ALIASES.get(name, name)
    if key not in profiles:
        raise KeyError(f"unknown NAB profile {name!r}; available: {sorted(profiles)} (aliases: {PROFILE_ALIASES})")
    return profiles[key]


def _window_rows(name: str, ts: np.ndarray, windows: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """Map window timestamps to row indices, by position as NAB does.

    A window bound that is a timestamp of the file maps to its first occurrence (NAB's rule; a few NAB
    files are not strictly sorted). Otherwise, for sorted files, the window covers the rows between
    its bounds.
    """
    is_sorted = len(ts) < 2 or bool(np.all(np.diff(ts) >= np.timedelta64(0)))

    def locate(bound: str, side: str) -> int:
        t = pd.Timestamp(bound).to_datetime64()
        hit = np.flatnonzero(ts == t)
        if hit.size:
            return int(hit[0])
        if not is_sorted:
            raise ValueError(
                f"{name}: window bound {bound!r} is not a timestamp of the file and the file is "
                f"not in time order; use exact data timestamps in {WINDOWS_FILE}"
            )
        return (
            int(np.searchsorted(ts, t, side="left"))
            if side == "left"
            else int(np.searchsorted(ts, t, side="right")) - 1
        )

    rows = []
    for win in windows:
        if len(win) != 2:
            raise ValueError(f"{name}: a window must be [start, end], got {win!r} in {WINDOWS_FILE}")
        left, right = locate(win[0], "left"), locate(win[1], "right")
        if right < left:
            raise ValueError(f"{name}: window {win!r} contains no rows of the data file; fix {WINDOWS_FILE}")
        rows.append((left, right))
    rows.sort()
    for (_, r0), (l1, _) in zip(rows, rows[1:], strict=False):
        if l1 <= r0:
            raise ValueError(f"{name}: windows overlap in {WINDOWS_FILE}; NAB windows must be disjoint")
    return rows


def read_nab_csv(path: Path, name: str | None = None, windows: Sequence[Sequence[str]] = ()) -> NabFile:
    """Read one ``timestamp,value`` CSV; rows are kept in file order (NAB scores by position)."""
    df = pd.read_csv(path, dtype={"timestamp": str})
    if "timestamp" not in df.columns or "value" not in df.columns:
        raise ValueError(f"{path}: expected columns timestamp,value; found {list(df.columns)}")
    ts = pd.to_datetime(df["timestamp"]).to_numpy(dtype="datetime64[ns]")
    name = name or path.name
    return NabFile(
        name=name,
        timestamps=ts,
        values=df["value"].to_numpy(dtype=np.float64),
        windows=_window_rows(name, ts, windows),
        raw_timestamps=df["timestamp"].tolist(),
    )


def load_nab(data_dir: Path | str, windows_path: Path | str | None = None, strict: bool = True) -> list[NabFile]:
    """All CSVs under ``data_dir`` (category sub-folders) with windows from ``combined_windows.json``.

    ``windows_path`` overrides where the windows file is (NAB's repo keeps it in labels/). With
    ``strict`` a CSV that has no entry in the windows file is an error (an unlabelled file would
    silently count as anomaly-free); entries without a CSV are ignored so subsets can be scored.
    """
    root = Path(data_dir)
    wpath = Path(windows_path) if windows_path is not None else root / WINDOWS_FILE
    if not wpath.exists():
        raise FileNotFoundError(f"{wpath} not found: a NAB folder needs {WINDOWS_FILE} (or pass windows_path)")
    all_windows = json.loads(wpath.read_text())
    csvs = sorted(p for p in root.rglob("*.csv") if p.is_file())
    if not csvs:
        raise FileNotFoundError(f"no CSV files under {root}; expected NAB layout <category>/<file>.csv")
    files = []
    for path in csvs:
        rel = path.relative_to(root).as_posix()
        if rel not in all_windows:
            if strict:
                raise KeyError(f"{rel} has no entry in {wpath}; add it (use [] for no anomalies) or remove the file")
            continue
        files.append(read_nab_csv(path, rel, all_windows[rel]))
    return files


def row_weights(file: NabFile, profile: NabProfile) -> np.ndarray:
    """What a detection at each row would be worth (before the first-detection-per-window rule).

    In-window rows: ``A_TP * S(p) / S(-1)``; other rows: ``A_FP * S(distance past previous window)``.
    """
    n = len(file.values)
    idx = np.arange(n)
    w = np.full(n, -profile.fp, dtype=np.float64)  # before any window: A_FP * -1
    if not file.windows:
        return w
    lefts = np.array([lo for lo, _ in file.windows])
    rights = np.array([hi for _, hi in file.windows])
    widths = (rights - lefts + 1).astype(np.float64)
    # Index of the last window starting at or before each row.
    k = np.searchsorted(lefts, idx, side="right") - 1
    has = k >= 0
    kk = np.where(has, k, 0)
    inside = has & (idx <= rights[kk])
    after = has & ~inside
    pos_in = -(rights[kk] - idx + 1) / widths[kk]
    # NAB divides by (width - 1); a one-row window would divide by zero, so use at least 1.
    pos_after = (idx - rights[kk]) / np.maximum(widths[kk] - 1.0, 1.0)
    w[inside] = profile.tp * scaled_sigmoid(pos_in[inside]) / MAX_TP
    w[after] = profile.fp * scaled_sigmoid(pos_after[after])
    return w


def _score_parts(file: NabFile, alarms: np.ndarray, profile: NabProfile) -> tuple[float, int, int, int]:
    alarms = np.asarray(alarms, dtype=bool)
    if alarms.shape != file.values.shape:
        raise ValueError(f"{file.name}: {alarms.shape[0]} alarms for {len(file.values)} rows; need one per row")
    weights = row_weights(file, profile)
    scorable = np.zeros(len(alarms), dtype=bool)
    scorable[file.probation :] = True
    labels = file.labels.astype(bool)
    fp_rows = alarms & scorable & ~labels
    raw = float(weights[fp_rows].sum())
    tp = fn = 0
    for left, right in file.scored_windows():
        hits = np.flatnonzero(alarms[left : right + 1])
        if hits.size:
            raw += float(weights[left + hits[0]])
            tp += 1
        else:
            raw -= profile.fn
            fn += 1
    return raw, tp, int(fp_rows.sum()), fn


def score_detections(file: NabFile, alarms: np.ndarray, profile: NabProfile) -> float:
    """Raw NAB score of one file for a boolean alarm per row."""
    return _score_parts(file, alarms, profile)[0]


def nab_score(files: Sequence[NabFile], alarms_by_file: Mapping[str, np.ndarray], profile: NabProfile) -> NabScore:
    """Corpus score: raw scores summed, then normalised to null = 0 and perfect = 100 on these files."""
    missing = [f.name for f in files if f.name not in alarms_by_file]
    if missing:
        raise KeyError(f"no alarms given for {len(missing)} file(s), e.g. {missing[:3]}; score every file")
    raw = 0.0
    tp = fp = fn = 0
    n_windows = 0
    for f in files:
        r, t, p, m = _score_parts(f, alarms_by_file[f.name], profile)
        raw += r
        tp, fp, fn = tp + t, fp + p, fn + m
        n_windows += len(f.scored_windows())
    null = -profile.fn * n_windows
    perfect = profile.tp * n_windows
    if perfect == null:
        raise ValueError(
            "the scored files have no anomaly window after the probationary period; "
            "NAB's normalisation (null=0, perfect=100) is undefined"
        )
    normalized = 100.0 * (raw - null) / (perfect - null)
    return NabScore(normalized, raw, null, perfect, tp, fp, fn, profile.name)
