"""Point-wise detection metrics as SKAB reports them (every row is one decision).

Ratios whose denominator is zero (e.g. precision when nothing was flagged, MAR when there was nothing to
find) are NaN rather than a made-up 0 or 1: a scorecard shows them as "n/a", and pooling counts over
files (:meth:`Confusion.__add__`) is how benchmark totals are formed anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


@dataclass(frozen=True)
class Confusion:
    """Point-wise confusion counts."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @classmethod
    def from_labels(cls, truth: np.ndarray, predicted: np.ndarray) -> Confusion:
        """Count agreements of two boolean (or 0/1) vectors of equal length."""
        t = np.asarray(truth).astype(bool)
        p = np.asarray(predicted).astype(bool)
        if t.shape != p.shape or t.ndim != 1:
            raise ValueError(f"truth and predictions must be 1-D and of equal length, got {t.shape} and {p.shape}")
        tp = int(np.count_nonzero(t & p))
        fp = int(np.count_nonzero(~t & p))
        fn = int(np.count_nonzero(t & ~p))
        return cls(tp=tp, fp=fp, tn=int(t.size) - tp - fp - fn, fn=fn)

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN): equals the harmonic mean of precision and recall, defined whenever either is."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def far(self) -> float:
        """False-alarm rate FP / (FP + TN): share of normal rows flagged."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missed-alarm rate FN / (FN + TP): share of anomalous rows not flagged."""
        return _ratio(self.fn, self.fn + self.tp)


def confusion(truth: np.ndarray, predicted: np.ndarray) -> Confusion:
    """Shorthand for :meth:`Confusion.from_labels`."""
    return Confusion.from_labels(truth, predicted)


# -- fault-labelled fleets (``vigil evaluate --dataset sim``) ---------------------------------------------
#
# Unit of decision: one (machine, window). A window covers [ws, ws + window_ms); a fault affects
# [start_ms, end_ms) of its machine. Definitions (also printed under the scorecard, see docs/detection.md):
#
# * positive window of type T: overlaps a fault of type T (a window can be positive for several types);
# * grace tail: a window overlapping no fault but [end_ms, end_ms + grace_ms) of one (history features and
#   rate-of-change still see the fault there): neither positive nor negative, counted apart;
# * negative window: every other window. A flagged negative window is a false positive (FP); FPs have no
#   fault type, so they are counted once, overall;
# * per-type precision is one-vs-normal: TP_T / (TP_T + FP), i.e. the precision the detector would have if
#   faults of type T were the only faults (every FP charged to every type); per-type F1 uses it with the
#   window recall TP_T / (TP_T + FN_T). The overall row pools all fault windows: TP / (TP + FP);
# * an event (one fault) is detected when any flagged window of its machine overlaps
#   [start_ms, end_ms + grace_ms); its delay is the end of the first such window minus start_ms. Events are
#   the faults that start inside the scored windows' span (earlier ones still make their windows positive).

FAULT_COLUMNS = ("machine", "category", "start_ms", "end_ms")
WINDOW_COLUMNS = ("machine", "window_start_ms", "flagged")
ALL_TYPES = "all"


def fault_window_pairs(windows: pd.DataFrame, faults: pd.DataFrame, window_ms: int, tail_ms: int = 0) -> pd.DataFrame:
    """(window row, fault row) positions where [ws, ws + window_ms) overlaps [start_ms, end_ms + tail_ms).

    Vectorised as a join on the machine (windows x that machine's faults), not a loop over rows.
    """
    w = pd.DataFrame(
        {
            "machine": windows["machine"].to_numpy(),
            "ws": windows["window_start_ms"].to_numpy(np.int64),
            "row": np.arange(len(windows)),
        }
    )
    f = pd.DataFrame(
        {
            "machine": faults["machine"].to_numpy(),
            "start": faults["start_ms"].to_numpy(np.int64),
            "end": faults["end_ms"].to_numpy(np.int64),
            "fault": np.arange(len(faults)),
        }
    )
    joined = w.merge(f, on="machine", how="inner")
    hit = (joined["start"] < joined["ws"] + window_ms) & (joined["end"] + tail_ms > joined["ws"])
    return joined.loc[hit, ["row", "fault"]].reset_index(drop=True)


@dataclass(frozen=True)
class FaultScorecard:
    """Per fault type (plus an ``all`` row), per event, and the false positives (see the definitions above)."""

    by_type: pd.DataFrame  # index: category, then "all"
    events: pd.DataFrame  # one row per scored fault: its columns plus detected, first_window_ms, delay_ms
    fp_windows: int  # flagged negative windows
    negative_windows: int  # FP + TN
    grace_windows: int  # windows only in a fault's grace tail (excluded from FP and TN)
    grace_flagged: int  # ... of which flagged
    window_role: np.ndarray  # per input window: "fault", "grace" or "normal"

    @property
    def fp_rate(self) -> float:
        """Share of negative windows flagged (FP / (FP + TN))."""
        return _ratio(self.fp_windows, self.negative_windows)


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def fault_scorecard(windows: pd.DataFrame, faults: pd.DataFrame, window_ms: int, grace_ms: int) -> FaultScorecard:
    """Score flagged (machine, window) decisions against labelled faults.

    ``windows``: one row per decision (``machine``, ``window_start_ms``, ``flagged``); windows a scorer
    said nothing about belong here too, unflagged. ``faults``: ``machine``, ``category`` (the fault type
    to report under), ``start_ms``, ``end_ms`` (exclusive) and any other columns (kept in ``events``).
    """
    missing = [c for c in WINDOW_COLUMNS if c not in windows.columns] + [
        c for c in FAULT_COLUMNS if c not in faults.columns
    ]
    if missing:
        raise ValueError(
            f"fault_scorecard: missing columns {missing}; windows need {WINDOW_COLUMNS}, faults need {FAULT_COLUMNS}"
        )
    if grace_ms < 0:
        raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
    faults = faults.reset_index(drop=True)
    flagged = windows["flagged"].to_numpy(bool)
    ws = windows["window_start_ms"].to_numpy(np.int64)
    categories = sorted(faults["category"].astype(str).unique())
    category = faults["category"].astype(str).to_numpy()

    inside = fault_window_pairs(windows, faults, window_ms)
    tails = fault_window_pairs(windows, faults, window_ms, tail_ms=grace_ms)
    in_fault = np.zeros(len(windows), dtype=bool)
    in_fault[inside["row"].to_numpy()] = True
    in_tail = np.zeros(len(windows), dtype=bool)
    in_tail[tails["row"].to_numpy()] = True
    grace = in_tail & ~in_fault
    negative = ~in_fault & ~grace
    fp = int((flagged & negative).sum())

    # events: faults starting within the scored span
    if len(windows):
        span_start, span_end = int(ws.min()), int(ws.max()) + window_ms
    else:
        span_start = span_end = 0
    starts = faults["start_ms"].to_numpy(np.int64)
    scored = (starts >= span_start) & (starts < span_end)
    hits = tails.loc[flagged[tails["row"].to_numpy()]]
    first = pd.Series(ws[hits["row"].to_numpy()], index=hits["fault"].to_numpy()).groupby(level=0).min()
    first_ms = np.full(len(faults), np.iinfo(np.int64).min, dtype=np.int64)
    first_ms[first.index.to_numpy(np.int64)] = first.to_numpy(np.int64)
    detected = first_ms != np.iinfo(np.int64).min
    events = (
        faults.assign(
            detected=detected,
            first_window_ms=np.where(detected, first_ms, -1),
            delay_ms=np.where(detected, first_ms + window_ms - starts, -1),
        )
        .loc[scored]
        .reset_index(drop=True)
    )

    rows = []
    for name in [*categories, ALL_TYPES]:
        pairs = inside if name == ALL_TYPES else inside.loc[category[inside["fault"].to_numpy()] == name]
        positive = np.zeros(len(windows), dtype=bool)
        positive[pairs["row"].to_numpy()] = True
        tp = int((positive & flagged).sum())
        fn = int((positive & ~flagged).sum())
        c = Confusion(tp=tp, fp=fp, tn=0, fn=fn)
        ev = events if name == ALL_TYPES else events.loc[events["category"].astype(str) == name]
        delays = ev.loc[ev["detected"], "delay_ms"].to_numpy(np.float64) / 1000.0
        rows.append(
            {
                "category": name,
                "events": len(ev),
                "detected": int(ev["detected"].sum()),
                "event_recall": _ratio(int(ev["detected"].sum()), len(ev)),
                "delay_p50_s": _percentile(delays, 50),
                "delay_p95_s": _percentile(delays, 95),
                "fault_windows": tp + fn,
                "tp": tp,
                "fn": fn,
                "fp": fp,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
            }
        )
    role = np.where(in_fault, "fault", np.where(grace, "grace", "normal"))
    return FaultScorecard(
        by_type=pd.DataFrame(rows).set_index("category"),
        events=events,
        fp_windows=fp,
        negative_windows=int(negative.sum()),
        grace_windows=int(grace.sum()),
        grace_flagged=int((grace & flagged).sum()),
        window_role=role,
    )
