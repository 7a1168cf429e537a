"""KNN-CAD: a conformal k-nearest-neighbour anomaly score over lagged windows of one series.

Why: a z-score against a running mean cannot follow a daily cycle, so every peak of a periodic series
looks alike to it. KNN-CAD (Burnaev & Ishimtsev 2016, "Conformalized density- and distance-based anomaly
detection in time-series data"; Ishimtsev et al. 2017, "Conformal k-NN anomaly detector for univariate
data streams") compares the SHAPE of the last ``dim`` values with the shapes seen recently: a cycle that
repeats has near neighbours, a new shape has none. The conformal step turns the raw distance into a rank
among recent distances, so the score means the same on every series. Written from those descriptions
(and the published parameters of its NAB entry: ``dim`` 19, ``k`` 27, training on the probationary
period, alarm suppression for a fifth of it), not from any code.

Per row ``t`` (NaN/inf are skipped: scored 0, state untouched); ``P`` = ``probation``, ``N = P - dim + 1``:
    e_t      = (x_{t-dim+1}, ..., x_t)                               # lagged window ("caterpillar")
    ref_t    = e_s for s in [r_t, r_t + N), r_t = max(dim - 1, t - 2N)   # the N windows before calib
    alpha_t  = sum of the k smallest (e_t - e)' M (e_t - e), e in ref_t  # non-conformity (NCM)
    calib_t  = the NCMs of rows t-N .. t-1                           # at P: leave-one-out NCMs of ref
    score_t  = #{c in calib_t : c < alpha_t} / N                     # 1 - conformal p-value
``M = inv(X'X + lam I)`` over the reference windows ``X`` (a Mahalanobis-type metric; ``lam`` = ``ridge``
times the mean eigenvalue, so directions the data never varies in are not blown up by rounding); it is
refreshed every ``P // 2`` rows. Rows ``t < P`` only train (score 0). After a score above
``alarm_level`` the next ``P // 5`` rows report at most 0.5 (the method's own alarm suppression: the
windows that still contain the anomalous value would otherwise alarm again). Everything per row is
vectorised; only the alarm suppression loops, over alarms.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detectors.base import StreamingDetector, register

# Query rows per distance chunk: (chunk x reference x dim) float64 differences stay ~10 MB.
_CHUNK = 64
# Suppressed rows report at most this (below any alarm level).
SUPPRESSED_SCORE = 0.5


@register()
class KnnCad(StreamingDetector):
    """Lagged windows -> sum of k nearest Mahalanobis-type distances -> conformal rank among recent NCMs."""

    name: ClassVar[str] = "knn_cad"
    # Alarm = the new window is further from its neighbours than all but a few (<= 0.4 %) of the last N
    # windows were; the method's published trigger (score >= 0.9965 for its NAB entry) gives the same
    # alarms for the calibration sizes used here. Fixed in advance, not fitted to labels.
    default_threshold: ClassVar[float] = 0.996

    def __init__(
        self,
        probation: int = 600,
        dim: int = 19,
        k: int = 27,
        alarm_level: float = 0.996,
        suppress_fraction: float = 0.2,
        ridge: float = 1e-6,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1 value, got {dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1 neighbour, got {k}")
        if probation < dim + k + 1:
            raise ValueError(
                f"probation must be >= dim + k + 1 = {dim + k + 1} rows (the first reference set needs more "
                f"than k windows), got {probation}; lower k or dim, or train longer"
            )
        if not 0.0 < alarm_level < 1.0:
            raise ValueError(f"alarm_level must be in (0, 1), got {alarm_level}")
        if suppress_fraction < 0:
            raise ValueError(f"suppress_fraction must be >= 0, got {suppress_fraction}")
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.probation, self.dim, self.k = int(probation), int(dim), int(k)
        self.alarm_level, self.ridge = float(alarm_level), float(ridge)
        self.n_ref = self.probation - self.dim + 1  # N: reference windows and calibration NCMs
        self.suppress_rows = int(self.probation * suppress_fraction)
        self.refresh_every = max(self.probation // 2, 1)

    def initial_state(self) -> dict[str, Any]:
        # buf: the last 2N + dim - 1 values; hist: NCMs of the last N rows; transform: C with M = C C'.
        return {"count": 0, "buf": [], "hist": [], "transform": [], "quiet_until": 0}

    # --- helpers ---------------------------------------------------------------------------------

    def _ref_lo(self, t: np.ndarray | int) -> np.ndarray | int:
        """First reference window (by its end row) for row ``t``."""
        return np.maximum(self.dim - 1, np.asarray(t) - 2 * self.n_ref)

    def _transform(self, windows: np.ndarray) -> np.ndarray:
        """C with C C' = inv(X'X + lam I): distances become squared Euclidean after ``windows @ C``."""
        gram = windows.T @ windows
        w, v = np.linalg.eigh(gram)
        lam = self.ridge * max(float(np.mean(np.abs(w))), 1e-300)
        return v / np.sqrt(np.maximum(w, 0.0) + lam)

    def _ncm(self, query: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Sum of the k smallest squared distances from each query row to its valid reference rows."""
        out = np.empty(query.shape[0])
        for i in range(0, query.shape[0], _CHUNK):
            diff = query[i : i + _CHUNK, None, :] - ref[None, :, :]  # exact 0 for exact repeats
            d2 = np.einsum("qrd,qrd->qr", diff, diff)
            d2[~valid[i : i + _CHUNK]] = np.inf
            out[i : i + _CHUNK] = np.partition(d2, self.k - 1, axis=1)[:, : self.k].sum(axis=1)
        return out

    # --- update ----------------------------------------------------------------------------------

    def update(self, state: dict[str, Any], values: np.ndarray, timestamps_ms: np.ndarray) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        scores = np.zeros(x.shape[0], dtype=np.float64)
        ok = np.isfinite(x)
        xs = x[ok]
        if xs.size == 0:
            return scores
        t0 = int(state["count"])
        raw = np.concatenate((np.asarray(state["buf"], dtype=np.float64), xs))
        g0 = t0 - (raw.size - xs.size)  # row index of raw[0]
        hist = np.asarray(state["hist"], dtype=np.float64)
        transform = (
            np.asarray(state["transform"], dtype=np.float64).reshape(-1, self.dim) if state["transform"] else None
        )
        out = np.zeros(xs.size)
        P, N, L = self.probation, self.n_ref, self.dim
        # windows[j] ends at row g0 + j + L - 1 (only read once a row >= P, so raw holds >= P >= L values).
        windows = sliding_window_view(raw, L) if raw.size >= L else raw[:0, None]

        def win(s_lo: int, s_hi: int) -> np.ndarray:
            return windows[s_lo - (g0 + L - 1) : s_hi - (g0 + L - 1)]

        t_end = t0 + xs.size
        a = max(t0, P)
        while a < t_end:
            if hist.size == 0:  # first scored row: calibrate on the training windows, leave-one-out
                train = win(L - 1, P)
                transform = self._transform(train)
                z = train @ transform
                valid = ~np.eye(N, dtype=bool)
                hist = self._ncm(z, z, valid)
            since = a - P
            if since % self.refresh_every == 0 and since > 0:
                lo = int(self._ref_lo(a))
                transform = self._transform(win(lo, lo + N))
            b = min(t_end, P + (since // self.refresh_every + 1) * self.refresh_every)
            rows = np.arange(a, b)
            lo_rows = self._ref_lo(rows)
            ref_lo, ref_hi = int(lo_rows[0]), int(lo_rows[-1]) + N
            zref = win(ref_lo, ref_hi) @ transform
            zq = win(a, b) @ transform
            cols = ref_lo + np.arange(ref_hi - ref_lo)
            valid = (cols[None, :] >= lo_rows[:, None]) & (cols[None, :] < lo_rows[:, None] + N)
            alpha = self._ncm(zq, zref, valid)
            ext = np.concatenate((hist, alpha))
            calib = sliding_window_view(ext, N)[: b - a]
            out[a - t0 : b - t0] = (calib < alpha[:, None]).sum(axis=1) / N
            hist = ext[-N:]
            a = b

        quiet_until = self._suppress(out, t0, int(state["quiet_until"]))
        scores[ok] = out
        keep = 2 * N + L - 1
        state.update(
            count=t_end,
            buf=raw[-keep:].tolist(),
            hist=hist.tolist(),
            transform=[] if transform is None else transform.ravel().tolist(),
            quiet_until=quiet_until,
        )
        return scores

    def _suppress(self, out: np.ndarray, t0: int, quiet_until: int) -> int:
        """Cap rows within ``suppress_rows`` after a kept alarm at 0.5, in place; returns the new quiet end.

        Loops over alarms, not rows: an alarm is kept only if the previous kept one is far enough back.
        """
        rows = t0 + np.arange(out.size)
        carried = rows < quiet_until  # still quiet after an alarm of an earlier block
        kept = []
        for i in np.flatnonzero(out > self.alarm_level):
            if t0 + i >= quiet_until:
                kept.append(int(i))
                quiet_until = t0 + int(i) + 1 + self.suppress_rows
        last = np.full(out.size, -1, dtype=np.int64)
        last[kept] = kept
        last = np.maximum.accumulate(last)
        after = np.arange(out.size) - last
        quiet = carried | ((last >= 0) & (after > 0) & (after <= self.suppress_rows))
        out[quiet] = np.minimum(out[quiet], SUPPRESSED_SCORE)
        return quiet_until
