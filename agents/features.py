"""Episode features: how each sensor moved during an episode compared with its baseline just before.

Per (episode, sensor), from the 5-s window statistics (vectorised over every episode of a batch with one
groupby): the shift of the mean in baseline standard deviations (``shift_z``), the change in within-window
noise (``noise_ratio``, log), whether the shift grew through the episode (``ramp_z``: last third minus
first third), the largest excursion relative to the shift (``peak_ratio``: a spike is a big peak with a
small mean shift), the share of frozen windows (``stuck``: stddev exactly 0 with >= 2 samples) and the
sample count relative to the baseline (``count_ratio``: 0 = silent sensor).

The classifier needs one fixed-length vector whatever the machine type, so sensors are mapped to roles
(temperature, vibration, current, ...) and each role contributes its most-moved sensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from agents.records import Episode

ROLES: dict[str, tuple[str, ...]] = {
    "temperature": ("bearing_temp", "winding_temp", "discharge_temp", "inlet_temp"),
    "vibration": ("vibration_rms",),
    "current": ("motor_current", "current"),
    "pressure": ("suction_pressure", "discharge_pressure", "oil_pressure", "static_pressure"),
    "flow": ("flow", "air_flow"),
    "speed": ("speed",),
    "supply": ("voltage", "power_factor", "power"),
}
SENSOR_ROLE = {sensor: role for role, sensors in ROLES.items() for sensor in sensors}
ROLE_FEATURES = ("shift", "noise", "ramp", "present")
GLOBAL_FEATURES = (
    "log_windows",
    "stuck_max",
    "count_ratio_min",
    "deviating_share",
    "peak_ratio_max",
    "top_shift_share",
)
FEATURE_NAMES = [f"{role}_{f}" for role in ROLES for f in ROLE_FEATURES] + list(GLOBAL_FEATURES)
DEVIATING_Z = 3.0
ONSET_LEAD_WINDOWS = 6  # a sensor may be seen leaving its baseline this many windows before the episode
EPS = 1e-9


def role_of(sensor: str) -> str:
    """A sensor's role; unknown sensors (a plant's own) count by name fragments, else as ``other``."""
    if sensor in SENSOR_ROLE:
        return SENSOR_ROLE[sensor]
    fragments = (
        ("temp", "temperature"),
        ("vib", "vibration"),
        ("current", "current"),
        ("press", "pressure"),
        ("flow", "flow"),
        ("speed", "speed"),
        ("volt", "supply"),
    )
    for fragment, role in fragments:
        if fragment in sensor:
            return role
    return "other"


def sensor_features(episodes: Sequence[Episode]) -> pd.DataFrame:
    """One row per (episode index, sensor): ``episode, sensor, role, shift_z, noise_ratio, ramp_z,
    peak_ratio, stuck, count_ratio``. A sensor seen in the baseline but silent during the episode gets
    count_ratio 0 and zeros elsewhere."""
    parts = []
    for i, e in enumerate(episodes):
        if e.stats.empty:
            continue
        frame = e.stats.assign(episode=i, during=e.stats["window_start_ms"].to_numpy(np.int64) >= e.start_ms)
        span = max(e.end_ms - e.start_ms, e.window_ms)
        third = np.clip((frame["window_start_ms"].to_numpy(np.int64) - e.start_ms) * 3 // span, 0, 2)
        frame["third"] = np.where(frame["during"], third, -1)
        frame["lead"] = frame["window_start_ms"] >= e.start_ms - ONSET_LEAD_WINDOWS * e.window_ms
        parts.append(frame)
    if not parts:
        return pd.DataFrame(
            columns=[
                "episode",
                "sensor",
                "role",
                "shift_z",
                "noise_ratio",
                "ramp_z",
                "peak_ratio",
                "stuck",
                "count_ratio",
                "onset_ms",
            ]
        )
    data = pd.concat(parts, ignore_index=True)
    data["frozen"] = (data["stddev"] == 0) & (data["count"] >= 2)
    keys = ["episode", "sensor"]
    # the baseline stops ONSET_LEAD_WINDOWS before the episode: a sensor that went first must not raise its own
    base = (
        data[~data["during"] & ~data["lead"]]
        .groupby(keys)
        .agg(b_mean=("avg", "mean"), b_sd=("avg", "std"), b_noise=("stddev", "mean"), b_count=("count", "mean"))
    )
    dur = (
        data[data["during"]]
        .groupby(keys)
        .agg(
            d_mean=("avg", "mean"),
            d_noise=("stddev", "mean"),
            d_count=("count", "mean"),
            d_max=("max", "max"),
            d_min=("min", "min"),
            stuck=("frozen", "mean"),
        )
    )
    early = data[data["third"] == 0].groupby(keys)["avg"].mean().rename("early")
    late = data[data["third"] == 2].groupby(keys)["avg"].mean().rename("late")
    f = base.join([dur, early, late], how="outer").reset_index()
    # One baseline deviation: the spread of the window means, floored by half the within-window noise and a
    # thousandth of the level (a perfectly flat baseline must not turn any change into an infinite z).
    f["scale"] = np.maximum.reduce(
        [
            f["b_sd"].fillna(0.0).to_numpy(),
            0.5 * f["b_noise"].fillna(0.0).to_numpy(),
            1e-3 * f["b_mean"].abs().fillna(0.0).to_numpy(),
            np.full(len(f), EPS),
        ]
    )
    scale = f["scale"]
    f["onset_ms"] = _onsets(data, f, keys)
    silent = f["d_count"].isna()
    f["shift_z"] = ((f["d_mean"] - f["b_mean"]) / scale).fillna(0.0)
    f["noise_ratio"] = np.log((f["d_noise"] + 1e-6) / (f["b_noise"] + 1e-6)).fillna(0.0)
    f["ramp_z"] = ((f["late"] - f["early"]) / scale).fillna(0.0)
    peak = np.maximum((f["d_max"] - f["b_mean"]).abs(), (f["d_min"] - f["b_mean"]).abs()) / scale
    f["peak_ratio"] = np.log1p(peak.fillna(0.0)) - np.log1p(f["shift_z"].abs())
    f["stuck"] = f["stuck"].fillna(0.0)
    f["count_ratio"] = np.where(silent, 0.0, (f["d_count"] / f["b_count"]).fillna(1.0))
    f["role"] = f["sensor"].map(role_of)
    return f[
        [
            "episode",
            "sensor",
            "role",
            "shift_z",
            "noise_ratio",
            "ramp_z",
            "peak_ratio",
            "stuck",
            "count_ratio",
            "onset_ms",
        ]
    ]


def _onsets(data: pd.DataFrame, f: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """First window (ms) from 6 windows before the episode on where the sensor's mean left its baseline by
    more than DEVIATING_Z baseline deviations (or froze, or fell silent); NaN when it never did."""
    ref = f[[*keys, "b_mean", "scale"]]
    rows = data.merge(ref, on=keys, how="left")
    z = ((rows["avg"] - rows["b_mean"]) / rows["scale"]).abs()
    off = (z > DEVIATING_Z) | rows["frozen"]
    first = rows.loc[off & rows["lead"]].groupby(keys)["window_start_ms"].min()
    return f.set_index(keys).index.map(first).to_numpy(dtype=np.float64)


def _squash(z: np.ndarray) -> np.ndarray:
    """Signed log scale: z-scores from 0.1 to 1,000 stay comparable for a tree model and a reader."""
    return np.sign(z) * np.log1p(np.abs(z))


def episode_matrix(episodes: Sequence[Episode], per_sensor: pd.DataFrame | None = None) -> np.ndarray:
    """The classifier's input: one row of :data:`FEATURE_NAMES` per episode (float32)."""
    per_sensor = sensor_features(episodes) if per_sensor is None else per_sensor
    n = len(episodes)
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    out[:, col["count_ratio_min"]] = 1.0
    out[:, col["log_windows"]] = np.log1p([len(e.verdicts) for e in episodes])
    if per_sensor.empty:
        return out
    f = per_sensor.assign(abs_shift=per_sensor["shift_z"].abs(), deviating=per_sensor["shift_z"].abs() > DEVIATING_Z)
    # each role's most-moved sensor
    top = f.sort_values("abs_shift", ascending=False, kind="stable").drop_duplicates(["episode", "role"])
    top = top[top["role"].isin(list(ROLES))]
    rows = top["episode"].to_numpy(int)
    for role in ROLES:
        sel = (top["role"] == role).to_numpy()
        r = rows[sel]
        out[r, col[f"{role}_shift"]] = _squash(top.loc[sel, "shift_z"].to_numpy(float))
        out[r, col[f"{role}_noise"]] = top.loc[sel, "noise_ratio"].to_numpy(float)
        out[r, col[f"{role}_ramp"]] = _squash(top.loc[sel, "ramp_z"].to_numpy(float))
        out[r, col[f"{role}_present"]] = 1.0
    g = f.groupby("episode")
    idx = g.size().index.to_numpy(int)
    out[idx, col["stuck_max"]] = g["stuck"].max().to_numpy(float)
    out[idx, col["count_ratio_min"]] = g["count_ratio"].min().to_numpy(float)
    out[idx, col["deviating_share"]] = g["deviating"].mean().to_numpy(float)
    out[idx, col["peak_ratio_max"]] = g["peak_ratio"].max().to_numpy(float)
    total = g["abs_shift"].sum().to_numpy(float)
    out[idx, col["top_shift_share"]] = g["abs_shift"].max().to_numpy(float) / np.maximum(total, EPS)
    return out
