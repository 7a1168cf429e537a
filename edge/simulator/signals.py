"""Vectorised healthy signals for all machines of one equipment type.

Arrays are shaped (machines, sensors, samples). Each tick:

* a machine's operating regime (idle / normal / high) may switch (Markov, mean dwell
  ``regime_dwell_s``); its load approaches the regime's level with a first-order response,
  scaled by a daily demand cycle, plus a slow Ornstein-Uhlenbeck wander;
* each sensor's steady-state value is linear in load and in the site's ambient temperature
  (a daily sinusoid, see :mod:`edge.simulator.equipment`), followed by a per-sensor first-order
  lag (thermal mass) and white measurement noise.

All lags are solved in closed form over the tick with a small (samples x samples) kernel, so
there is no Python loop over samples, and their state is carried to the next tick so the
signals are continuous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.simulator.equipment import EquipmentType

REGIME_NAMES = ("idle", "normal", "high")
REGIME_LEVELS = np.array([0.15, 0.6, 0.9])  # load per regime before machine/daily scaling
REGIME_PROBS = np.array([0.2, 0.55, 0.25])  # chosen when a machine starts or switches regime
LOAD_MIN, LOAD_MAX = 0.05, 1.0
LOAD_TAU_S = 20.0  # how fast load follows a regime change
LOAD_WANDER_TAU_S = 30.0
LOAD_WANDER_STD = 0.03
DEMAND_DAILY_AMPLITUDE = 0.08  # +-8 % load over the day, peak mid-afternoon
AMBIENT_DAILY_AMPLITUDE_DEGC = 6.0
AMBIENT_REFERENCE_DEGC = 20.0
MS_PER_HOUR = 3_600_000


def lag_kernel(tau_s: np.ndarray, dt_s: float, gap_s: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed form of ``y[k] = a*y[k-1] + (1-a)*x[k]`` over ``n`` samples, one kernel per tau.

    Returns ``(K, decay)`` with ``y = K @ x + decay * y_prev``; K is (len(tau), n, n), decay is
    (len(tau), n). ``gap_s`` is the time from the previous tick's last sample to this tick's first
    (normally ``dt_s``; longer after skipped ticks). ``tau_s == 0`` gives the identity.
    """
    tau = np.asarray(tau_s, dtype=np.float64).reshape(-1)
    with np.errstate(divide="ignore"):
        a = np.where(tau > 0, np.exp(-dt_s / np.where(tau > 0, tau, 1.0)), 0.0)
        a_gap = np.where(tau > 0, np.exp(-gap_s / np.where(tau > 0, tau, 1.0)), 0.0)
    k = np.arange(n)
    diff = k[:, None] - k[None, :]  # k - j
    lower = diff >= 0
    powers = np.where(lower[None], a[:, None, None] ** np.maximum(diff, 0)[None], 0.0)
    kernel = (1.0 - a)[:, None, None] * powers
    # The first input stands for the whole gap since the previous sample: weights then sum to 1 - decay.
    kernel[:, :, 0] = (a[:, None] ** k[None, :]) * (1.0 - a_gap)[:, None]
    decay = a_gap[:, None] * a[:, None] ** k[None, :]
    return kernel, decay


def local_day_angle(t_ms: np.ndarray, utc_offset_h: np.ndarray) -> np.ndarray:
    """Angle of the local time of day, 0 at 09:00 so that sin() peaks at 15:00 and bottoms at 03:00."""
    hours = (t_ms / MS_PER_HOUR + utc_offset_h) % 24.0
    return 2.0 * np.pi * (hours - 9.0) / 24.0


@dataclass(frozen=True)
class SiteClimate:
    """Per-site weather and clock: mean ambient temperature and UTC offset."""

    mean_temp_degc: np.ndarray  # (sites,)
    utc_offset_h: np.ndarray  # (sites,)

    @classmethod
    def random(cls, sites: int, rng: np.random.Generator) -> SiteClimate:
        return cls(rng.uniform(10.0, 22.0, sites), rng.integers(-8, 9, sites).astype(np.float64))

    def ambient(self, t_ms: np.ndarray, site_idx: np.ndarray) -> np.ndarray:
        angle = local_day_angle(t_ms, self.utc_offset_h[site_idx][:, None])
        return self.mean_temp_degc[site_idx][:, None] + AMBIENT_DAILY_AMPLITUDE_DEGC * np.sin(angle)

    def demand(self, t_ms: np.ndarray, site_idx: np.ndarray) -> np.ndarray:
        angle = local_day_angle(t_ms, self.utc_offset_h[site_idx][:, None])
        return 1.0 + DEMAND_DAILY_AMPLITUDE * np.sin(angle)


class SignalGenerator:
    """Healthy, continuous signals for the machines of one equipment type."""

    def __init__(
        self,
        etype: EquipmentType,
        site_idx: np.ndarray,
        climate: SiteClimate,
        rng: np.random.Generator,
        samples_per_sensor: int,
        batch_interval_ms: int,
        regime_dwell_s: float = 1200.0,
    ) -> None:
        self.etype = etype
        self.site_idx = np.asarray(site_idx, dtype=np.intp)
        self.climate = climate
        self.rng = rng
        self.n = samples_per_sensor
        self.interval_ms = batch_interval_ms
        self.dt_s = batch_interval_ms / 1000.0 / samples_per_sensor
        self.switch_prob = 1.0 - np.exp(-batch_interval_ms / 1000.0 / regime_dwell_s)
        m, s = len(self.site_idx), len(etype.sensors)
        span = etype.column("span")
        # Per-machine variation: each unit sits a little off nominal and responds a little differently.
        self.offset = np.clip(rng.normal(0.0, 0.02, (m, s)), -0.05, 0.05) * span
        self.gain = etype.column("load_gain") * np.clip(rng.normal(1.0, 0.03, (m, s)), 0.92, 1.08)
        self.base = etype.column("base") + self.offset
        self.load_scale = np.clip(rng.normal(1.0, 0.04, m), 0.9, 1.08)
        self.ambient_gain = etype.column("ambient_gain")
        self.noise_std = etype.column("noise")
        self.tau = etype.column("tau_s")
        # State carried between ticks.
        self.regime = rng.choice(len(REGIME_LEVELS), size=m, p=REGIME_PROBS)
        self.load_det: np.ndarray | None = None  # (m,) deterministic load at the last sample
        self.wander = np.zeros(m)  # (m,) OU wander at the last sample
        self.lagged: np.ndarray | None = None  # (m, s) lagged sensor values at the last sample
        self.last_end_ms: int | None = None
        self.last_load: np.ndarray | None = None  # (m, n) load of the last tick, for tests and debugging

    @property
    def machines(self) -> int:
        return len(self.site_idx)

    def generate(self, t_ms: np.ndarray, end_ms: int) -> np.ndarray:
        """Values (machines, sensors, samples) at sample times ``t_ms`` (machines, samples)."""
        m, n = t_ms.shape
        gap_s = self.dt_s
        if self.last_end_ms is not None:
            gap_s += (end_ms - self.last_end_ms - self.interval_ms) / 1000.0
        rng = self.rng

        switch = rng.random(m) < self.switch_prob
        drawn = rng.choice(len(REGIME_LEVELS), size=m, p=REGIME_PROBS)
        self.regime = np.where(switch, drawn, self.regime)

        demand = self.climate.demand(t_ms, self.site_idx)
        target = REGIME_LEVELS[self.regime][:, None] * self.load_scale[:, None] * demand  # (m, n)
        if self.load_det is None:
            self.load_det = target[:, 0].copy()
        k_load, d_load = lag_kernel(np.array([LOAD_TAU_S]), self.dt_s, gap_s, n)
        load_det = target @ k_load[0].T + self.load_det[:, None] * d_load[0]
        k_w, d_w = lag_kernel(np.array([LOAD_WANDER_TAU_S]), self.dt_s, gap_s, n)
        a_w = np.exp(-self.dt_s / LOAD_WANDER_TAU_S)
        shocks = rng.standard_normal((m, n)) * (LOAD_WANDER_STD * np.sqrt(1 - a_w**2) / (1 - a_w))
        wander = shocks @ k_w[0].T + self.wander[:, None] * d_w[0]
        self.load_det, self.wander = load_det[:, -1].copy(), wander[:, -1].copy()
        load = np.clip(load_det + wander, LOAD_MIN, LOAD_MAX)
        self.last_load = load

        ambient = self.climate.ambient(t_ms, self.site_idx)  # (m, n)
        steady = self.base[:, :, None] + self.gain[:, :, None] * load[:, None, :]
        steady += self.ambient_gain[None, :, None] * (ambient[:, None, :] - AMBIENT_REFERENCE_DEGC)
        if self.lagged is None:
            self.lagged = steady[:, :, 0].copy()
        kernel, decay = lag_kernel(self.tau, self.dt_s, gap_s, n)
        values = np.einsum("msj,skj->msk", steady, kernel, optimize=True)
        values += self.lagged[:, :, None] * decay[None, :, :]
        self.lagged = values[:, :, -1].copy()
        values += rng.standard_normal(values.shape) * self.noise_std[None, :, None]
        self.last_end_ms = end_ms
        return values
