"""`vigil evaluate --dataset sim`: a simulated fleet with labelled faults, scored by the streaming job's own code.

Why offline: the scorecard must measure what runs in production, not a re-implementation, yet a two-hour
fleet run cannot take two hours. So only the transport is replaced; every decision is made by the job's code:

1. simulate: :class:`edge.simulator.fleet.Fleet` (``generate``: one array per equipment type per 5-s tick,
   all machines at once; no protobuf, no Kafka), random faults plus injected dead machines / sensors, with
   their :class:`~edge.simulator.faults.FaultLabel` ground truth;
2. window statistics as ``sql/flink/window_stats/08_insert_window_stats.sql`` defines them: per (machine, sensor, window
   ``floor(ts / W) * W``) count, avg, population stddev (exactly 0 for constant samples, as the JVM's
   Welford accumulator gives), min, max;
3. rule results as ``sql/flink/anomaly_scoring/*_rules_*.sql`` compute them, from the same validated rules file
   (:func:`vigil.rules.load_rules` on ``settings.scoring.rules_path``): static min/max on the average,
   |avg - previous avg| > max_step, stuck (count >= 2 and stddev == 0 in each of the last N rows),
   count_drop (count < (1 - max_drop) x the average count of the last `windows` rows and this one, in each of
   the last `persist_windows` rows), and
   the EWMA z-score against the baseline before the window (:class:`detectors.ewma_zscore.EwmaZScore`,
   the Python twin of the Java UDAF), NaN during warm-up;
4. models: :func:`operations.training.detectors.train_type` (what ``vigil train`` runs) on the first part of the run,
   labelled fault windows excluded, registered in a temporary :class:`~onnx_models.registry.ModelRegistry`
   and loaded through :class:`udfs.model_set.ModelSet` as the job's UDF loads them;
5. scoring: hops built as ``sql/flink/anomaly_scoring/14_hops.sql`` builds them (each window as the current
   one with the machine's previous ``history_windows - 1`` windows) and judged by
   :meth:`udfs.scoring.WindowScorer.score` in large batches;
6. metrics: :func:`operations.evaluate.metrics.fault_scorecard` (definitions there and in docs/detection.md).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from detectors import job_detectors
from detectors.ewma_zscore import EwmaZScore
from edge.simulator.equipment import EQUIPMENT_TYPES
from edge.simulator.faults import FaultLabel, FaultType
from edge.simulator.fleet import Fleet, GroupArrays
from onnx_models.history import DEFAULT_HISTORY
from onnx_models.registry import ModelRegistry
from operations.evaluate.metrics import FaultScorecard, fault_scorecard
from operations.evaluate.pages import (
    PageScorecard,
    page_scorecard,
    page_summary,
    print_page_scorecard,
    replay_alerts,
)
from operations.training.detectors import train_type
from udfs.model_set import ModelSet
from udfs.scoring import ScoringConfig, WindowScorer
from vigil.rules import RULE_NAMES, RulesConfig, load_rules
from vigil.settings import Settings

DEFAULT_START_MS = 1_795_564_800_000  # 2026-11-24T00:00:00Z: a fixed (window-aligned) clock for reproducible runs
STATS_COLUMNS = ("count", "avg", "stddev", "min", "max")
# Order of the rule names in a window's rule_hits (the CONCAT_WS order of anomaly_scoring_rule_results.sql).
RULE_ORDER = ("threshold_min", "threshold_max", "rate_of_change", "stuck", "zscore", "count_drop")
assert set(RULE_ORDER) == set(RULE_NAMES)
DEAD_DURATION_S = (120.0, 300.0)  # injected dead machines / sensors stay silent this long
TRAIN_SOURCE = "vigil evaluate --dataset sim (simulated fleet)"


@dataclass(frozen=True)
class PlannedFault:
    """A fault injected at a fixed time (seconds after the run start) on one machine."""

    fault_type: str
    equipment_id: str
    start_s: float
    duration_s: float
    sensors: tuple[str, ...] | None = None
    magnitude: float | dict[str, float] | None = None
    probability: float = 1.0


@dataclass(frozen=True)
class SimOptions:
    machines: int = 60
    duration_s: float = 7200.0
    seed: int = 7
    fault_rate: float | None = None  # random faults per machine-hour (None: settings.simulator's)
    # Random fault types (edge.simulator.faults.FAULT_MIXES). The detector scorecard is measured on "generic"
    # (signal-level faults) whatever the live simulator's setting; the agents' evaluation uses "plant".
    fault_mix: str = "generic"
    samples_per_sensor: int | None = None  # None: settings.simulator's
    equipment_types: tuple[str, ...] | None = None  # None: every simulated type
    train_fraction: float = 0.4  # first part of the run's windows: model training only, not scored
    dead_machines: int = 2  # machines made silent (dropout of every sensor) at random times in the scored part
    dead_sensors: int = 2  # single sensors made silent likewise (random dropouts may add more)
    grace_ms: int | None = None  # None: history_windows windows (a fault stays in the model's history that long)
    history: int = DEFAULT_HISTORY  # model feature history (windows), at most settings.scoring.history_windows
    start_ms: int = DEFAULT_START_MS
    hop_batch: int = 10_000  # hops per WindowScorer.score call (the job's Arrow batch size)
    inject: tuple[PlannedFault, ...] = ()


@dataclass
class SimRun:
    """A simulated run reduced to what the job would see: window statistics, plus the ground truth."""

    stats: pd.DataFrame  # one row per (machine, sensor, window) with data, sorted by machine, sensor, window
    labels: list[FaultLabel]
    machines: pd.DataFrame  # equipment_id, site, equipment_type
    start_ms: int
    end_ms: int  # exclusive; windows [start_ms, end_ms)
    window_ms: int
    samples: int  # raw samples simulated


@dataclass
class SimEvaluation:
    options: SimOptions
    scorecard: FaultScorecard
    detectors: pd.DataFrame  # per detector name: fault / grace / FP windows where it fired, first detections
    verdicts: pd.DataFrame  # one row per scored hop (equipment_id, window_start_ms, the scorer's columns)
    windows: pd.DataFrame  # the scored (machine, window) grid: flagged, role
    info: dict[str, Any] = field(default_factory=dict)
    run: SimRun | None = None  # the simulated window statistics and labels (what the agents read)
    pages: PageScorecard | None = None  # the verdicts through the alert policy: what reaches people
    timings_s: dict[str, float] = field(default_factory=dict)


# -- 1. simulate -----------------------------------------------------------------------------------------
def fault_category(label: FaultLabel) -> str:
    """The type a fault is reported under: its own, except dropouts split into dead machine / sensor / partial."""
    if label.fault_type != FaultType.DROPOUT:
        return label.fault_type
    if float(label.params.get("probability", 1.0)) < 1.0:
        return "dropout_partial"
    every = set(EQUIPMENT_TYPES[label.equipment_type].sensor_names)
    return "dead_machine" if every <= set(label.sensors) else "dead_sensor"


def _busy(fleet: Fleet, equipment_id: str, start_ms: int, end_ms: int, margin_ms: int) -> bool:
    return any(
        lb.machine == equipment_id and lb.start_ms < end_ms + margin_ms and lb.end_ms + margin_ms > start_ms
        for lb in fleet.fault_history
    )


def _plan_dead(options: SimOptions, first_ms: int, end_ms: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """(start_ms, kind) of the injected silences, spread over the scored part of the run."""
    kinds = ["dead_machine"] * options.dead_machines + ["dead_sensor"] * options.dead_sensors
    latest = end_ms - int(DEAD_DURATION_S[1] * 1000) - 60_000
    if not kinds or latest <= first_ms:
        return []
    starts = rng.integers(first_ms, latest, len(kinds))
    return sorted(zip(starts.tolist(), kinds, strict=True))


def simulate(
    settings: Settings, options: SimOptions, train_end_ms: int, advance: Callable[[int], None] | None = None
) -> SimRun:
    """Run the fleet tick by tick (all machines of a type per call) and reduce it to window statistics."""
    sim = settings.simulator
    fleet = Fleet(
        options.machines,
        sites=sim.sites,
        seed=options.seed,
        samples_per_sensor=options.samples_per_sensor or sim.samples_per_sensor,
        batch_interval_s=sim.batch_interval_s,
        fault_rate_per_machine_hour=sim.fault_rate_per_machine_hour
        if options.fault_rate is None
        else options.fault_rate,
        equipment_types=options.equipment_types,
        fault_mix=options.fault_mix,
    )
    interval = fleet.interval_ms
    window_ms = settings.window.size_ms
    n_ticks = max(1, int(np.ceil(options.duration_s * 1000 / interval - 1e-9)))
    start = options.start_ms
    end = start + n_ticks * interval
    rng = np.random.default_rng([options.seed, 0x5EED])
    dead = _plan_dead(options, train_end_ms, end, rng)
    explicit = sorted(options.inject, key=lambda p: p.start_s)
    order = rng.permutation(len(fleet.machines))
    margin = 60_000
    arrays: dict[str, list[GroupArrays]] = {}
    for tick in range(n_ticks):
        tick_end = start + (tick + 1) * interval
        while explicit and start + int(explicit[0].start_s * 1000) < tick_end:
            p = explicit.pop(0)
            s_ms = start + int(p.start_s * 1000)
            fleet.inject(
                p.fault_type,
                p.equipment_id,
                s_ms,
                s_ms + int(p.duration_s * 1000),
                p.sensors,
                p.magnitude,
                p.probability,
            )
        while dead and dead[0][0] < tick_end:
            s_ms, kind = dead.pop(0)
            s_ms = max(s_ms, tick_end - interval + 1)
            e_ms = s_ms + int(rng.uniform(*DEAD_DURATION_S) * 1000)
            free = [
                fleet.machines[i] for i in order if not _busy(fleet, fleet.machines[i].equipment_id, s_ms, e_ms, margin)
            ]
            if not free:
                continue
            machine = free[int(rng.integers(len(free)))]
            names = EQUIPMENT_TYPES[machine.equipment_type].sensor_names
            sensors = names if kind == "dead_machine" else (names[int(rng.integers(len(names)))],)
            fleet.inject(FaultType.DROPOUT, machine.equipment_id, s_ms, e_ms, sensors, probability=1.0)
        for g in fleet.generate(tick_end):
            arrays.setdefault(g.etype.name, []).append(g)
        if advance is not None:
            advance(1)
    frames, samples = [], 0
    machines = pd.DataFrame(
        [(m.equipment_id, m.site, m.equipment_type, m.line) for m in fleet.machines],
        columns=["equipment_id", "site", "equipment_type", "line"],
    )
    for name, ticks in arrays.items():
        t_ms = np.concatenate([g.t_ms for g in ticks], axis=1)
        values = np.concatenate([g.values for g in ticks], axis=2)
        samples += int(np.count_nonzero(~np.isnan(values)))
        ids = machines["equipment_id"].to_numpy()[ticks[0].machine_index]
        frames.append(window_stats(name, ids, EQUIPMENT_TYPES[name].sensor_names, t_ms, values, window_ms))
        del t_ms, values
    arrays.clear()
    stats = pd.concat(frames, ignore_index=True)
    stats = stats.loc[(stats["window_start_ms"] >= start) & (stats["window_start_ms"] < end)]
    stats = stats.merge(machines[["equipment_id", "site"]], on="equipment_id", how="left")
    stats = stats.sort_values(["equipment_id", "sensor", "window_start_ms"], kind="stable").reset_index(drop=True)
    labels = [lb for lb in fleet.fault_history if lb.start_ms < end]
    return SimRun(stats, labels, machines, start, end, window_ms, samples)


# -- 2. window statistics --------------------------------------------------------------------------------
def window_stats(
    equipment_type: str,
    equipment_ids: Sequence[str],
    sensors: Sequence[str],
    t_ms: np.ndarray,
    values: np.ndarray,
    window_ms: int,
) -> pd.DataFrame:
    """Per (machine, sensor, window) count, avg, population stddev, min, max of the non-NaN samples.

    ``t_ms`` (machines, samples) in time order per machine, ``values`` (machines, sensors, samples) with
    NaN for samples that dropped out. A (machine, window) is a contiguous run of samples, so every
    statistic is one ``reduceat`` over all machines and sensors at once. Sensors without a sample in a
    window produce no row (as in the job). stddev is two-pass, and exactly 0 when min == max (what the
    JVM's Welford accumulator returns for constant samples; the stuck rule tests stddev == 0).
    """
    m, s, n = values.shape
    win = (t_ms // window_ms) * window_ms
    flat_win = win.ravel()
    first = np.ones(m * n, dtype=bool)
    first[1:] = flat_win[1:] != flat_win[:-1]
    first[::n] = True  # a new machine starts a new segment even in the same window
    starts = np.flatnonzero(first)
    seg_len = np.diff(np.append(starts, m * n))
    v = values.transpose(1, 0, 2).reshape(s, m * n)
    ok = ~np.isnan(v)
    count = np.add.reduceat(ok, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.add.reduceat(np.where(ok, v, 0.0), starts, axis=1) / count
        dev = np.where(ok, v - np.repeat(avg, seg_len, axis=1), 0.0)
        std = np.sqrt(np.add.reduceat(dev * dev, starts, axis=1) / count)
    vmin = np.fmin.reduceat(v, starts, axis=1)
    vmax = np.fmax.reduceat(v, starts, axis=1)
    std = np.where(vmin == vmax, 0.0, std)
    keep = count > 0  # (sensors, segments)
    sensor_idx, seg_idx = np.nonzero(keep)
    return pd.DataFrame(
        {
            "equipment_id": np.asarray(equipment_ids, dtype=object)[starts[seg_idx] // n],
            "equipment_type": equipment_type,
            "sensor": np.asarray(sensors, dtype=object)[sensor_idx],
            "window_start_ms": flat_win[starts[seg_idx]].astype(np.int64),
            "count": count[keep].astype(np.float64),
            "avg": avg[keep],
            "stddev": std[keep],
            "min": vmin[keep],
            "max": vmax[keep],
        }
    )


# -- 3. rule results -------------------------------------------------------------------------------------
def _limits(config: RulesConfig) -> pd.DataFrame:
    rules = config.resolved()
    return pd.DataFrame(
        {
            "equipment_type": [r.equipment_type for r in rules],
            "sensor": [r.sensor for r in rules],
            "min_limit": [np.nan if r.min is None else r.min for r in rules],
            "max_limit": [np.nan if r.max is None else r.max for r in rules],
            "max_step": [np.nan if r.max_step is None else r.max_step for r in rules],
            "zscore_max": [r.zscore_max for r in rules],
            "stuck_windows": [r.stuck_windows for r in rules],
        }
    )


def rule_results(stats: pd.DataFrame, config: RulesConfig) -> pd.DataFrame:
    """``stats`` plus ``rule_hits`` (comma-separated, '' for none) and ``zratio`` (|z| / zscore_max, NaN in warm-up).

    ``stats`` must be sorted by machine, sensor, window (each series contiguous, in event-time order),
    as the job's OVER windows see it (ROWS frames: the previous *row* of the series, not the previous
    window in time). Types and sensors the config does not list get the defaults (z-score and stuck).
    """
    out = stats.merge(_limits(config), on=["equipment_type", "sensor"], how="left", sort=False)
    out.index = stats.index
    out["zscore_max"] = out["zscore_max"].fillna(config.defaults.zscore_max)
    out["stuck_windows"] = out["stuck_windows"].fillna(config.defaults.stuck_windows).astype(np.int64)
    n = len(out)
    machine = out["equipment_id"].to_numpy()
    sensor = out["sensor"].to_numpy()
    new_series = np.ones(n, dtype=bool)
    if n:
        new_series[1:] = (machine[1:] != machine[:-1]) | (sensor[1:] != sensor[:-1])
    bounds = np.append(np.flatnonzero(new_series), n)
    series_start = np.repeat(bounds[:-1], np.diff(bounds))
    pos = np.arange(n) - series_start

    avg = out["avg"].to_numpy(np.float64)
    ws = out["window_start_ms"].to_numpy(np.int64)
    abs_z = np.full(n, np.nan)
    detector = EwmaZScore(alpha=config.ewma.alpha, warmup=config.ewma.warmup)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # one vectorised update per series
        abs_z[a:b] = detector.update(detector.initial_state(), avg[a:b], ws[a:b])
    abs_z[pos < config.ewma.warmup] = np.nan  # the UDAF returns NULL until `warmup` values were absorbed

    step = np.abs(avg - np.concatenate(([np.nan], avg[:-1])))
    step[pos == 0] = np.nan
    flat = ((out["count"].to_numpy() >= 2) & (out["stddev"].to_numpy() == 0)).astype(np.int64)
    csum = np.cumsum(flat)
    n_stuck = out["stuck_windows"].to_numpy(np.int64)
    before_series = np.where(series_start > 0, csum[np.maximum(series_start - 1, 0)], 0)
    before_frame = np.where(pos >= n_stuck, csum[np.maximum(np.arange(n) - n_stuck, 0)], before_series)
    flat_last_n = csum - before_frame

    count = out["count"].to_numpy(np.float64)
    counts = config.sample_count
    csum_count = np.cumsum(count)
    first = np.maximum(np.arange(n) - counts.windows, series_start)  # the frame: `windows` rows back, same series
    frame_sum = csum_count - np.where(first > 0, csum_count[np.maximum(first - 1, 0)], 0.0)
    short = (count < frame_sum / (np.arange(n) - first + 1) * (1 - counts.max_drop)).astype(np.int64)
    csum_short = np.cumsum(short)
    first = np.maximum(np.arange(n) - counts.persist_windows + 1, series_start)
    short_last_n = csum_short - np.where(first > 0, csum_short[np.maximum(first - 1, 0)], 0)
    count_drop = short_last_n >= counts.persist_windows

    with np.errstate(invalid="ignore"):
        hits = np.vstack(
            [
                avg < out["min_limit"].to_numpy(np.float64),
                avg > out["max_limit"].to_numpy(np.float64),
                step > out["max_step"].to_numpy(np.float64),
                flat_last_n >= n_stuck,
                abs_z > out["zscore_max"].to_numpy(np.float64),
                count_drop,
            ]
        )
    code = (hits.astype(np.int64) << np.arange(len(RULE_ORDER))[:, None]).sum(axis=0)
    names = np.array(
        [",".join(r for i, r in enumerate(RULE_ORDER) if c >> i & 1) for c in range(1 << len(RULE_ORDER))], dtype=object
    )
    out["rule_hits"] = names[code]
    out["zratio"] = abs_z / out["zscore_max"].to_numpy(np.float64)
    return out.drop(columns=["min_limit", "max_limit", "max_step", "zscore_max", "stuck_windows"])


# -- 4. models ---------------------------------------------------------------------------------------------
def train_models(
    run: SimRun,
    train_end_ms: int,
    registry: ModelRegistry,
    history: int,
    advance: Callable[[int], None] | None = None,
    alarm_rate: float | None = None,
) -> list[dict[str, Any]]:
    """One model per (equipment type, detector) on the run's first part, exactly as `vigil train` fits it."""

    out = []
    part = run.stats.loc[run.stats["window_start_ms"] < train_end_ms]
    for etype, frame in part.groupby("equipment_type", sort=True):
        frame = frame.rename(columns={"window_start_ms": "window_start"})
        for v in train_type(
            str(etype),
            frame,
            run.labels,
            registry,
            detectors=job_detectors(),
            size_ms=run.window_ms,
            history=history,
            alarm_rate=alarm_rate,
            promote=True,
            source=TRAIN_SOURCE,
            since_ms=run.start_ms,
            until_ms=train_end_ms,
        ):
            rows, metrics = v.metadata["rows"], v.metadata["metrics"]
            out.append(
                {
                    "equipment_type": v.equipment_type,
                    "detector": v.detector,
                    "version": v.version,
                    "threshold": v.threshold,
                    "normal_windows": rows["normal"],
                    "excluded_fault": rows["excluded_fault"],
                    "alarm_rate_test": metrics["alarm_rate_test"],
                }
            )
        if advance is not None:
            advance(1)
    return out


# -- 5. hops, scored by the job's scorer ------------------------------------------------------------------
LONG_STATS = ("sensor", "window_start_ms", *STATS_COLUMNS, "rule_hits", "zratio")
# Verdict columns kept, then one score column per detector the scorer knows (WindowScorer.score_names).
VERDICT_KEEP = (
    "emit",
    "kind",
    "is_anomaly",
    "severity",
    "score",
    "detectors",
    "rule_hits",
    "top_sensors",
    "dead_sensors",
    "model_versions",
    "summary",
    "last_seen_ms",
)


def build_hops(
    rows: pd.DataFrame, first_ms: int, end_ms: int, history_windows: int, window_ms: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The job's HOP windows whose current window starts in [first_ms, end_ms), as the scorer's (long, current).

    A HOP of ``history_windows`` windows sliding by one window holds, for the current window w, the
    machine's rows of windows w - (history_windows - 1) .. w; a hop exists when it holds any row (so a
    machine silent for the whole hop gets none, as in Flink). ``rows``: rule results with site and type.
    """
    lo = first_ms - (history_windows - 1) * window_ms
    part = rows.loc[(rows["window_start_ms"] >= lo) & (rows["window_start_ms"] < end_ms)]
    k = np.arange(history_windows, dtype=np.int64)
    rep = np.repeat(np.arange(len(part)), history_windows)
    cur = part["window_start_ms"].to_numpy(np.int64)[rep] + np.tile(k, len(part)) * window_ms
    keep = (cur >= first_ms) & (cur < end_ms)
    rep, cur = rep[keep], cur[keep]
    machine_code, _ = pd.factorize(part["equipment_id"].to_numpy()[rep])
    key = machine_code.astype(np.int64) * ((end_ms - first_ms) // window_ms + 1) + (cur - first_ms) // window_ms
    uniq, group = np.unique(key, return_inverse=True)
    sample = np.zeros(len(uniq), dtype=np.int64)
    sample[group] = rep  # any row of the hop: its machine's site and type
    current = pd.DataFrame(
        {
            "equipment_id": part["equipment_id"].to_numpy()[sample],
            "site": part["site"].to_numpy()[sample],
            "equipment_type": part["equipment_type"].to_numpy()[sample],
            "window_start_ms": first_ms + (uniq % ((end_ms - first_ms) // window_ms + 1)) * window_ms,
        }
    )
    long = pd.DataFrame({"group": group.astype(np.int64)})
    for col in LONG_STATS:
        long[col] = part[col].to_numpy()[rep]
    return long, current


def score_run(
    run: SimRun,
    rules: pd.DataFrame,
    first_ms: int,
    scorer: WindowScorer,
    history_windows: int,
    hop_batch: int,
    advance: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Verdicts for every hop whose current window is in [first_ms, run.end_ms), in batches of ~hop_batch hops."""
    w = run.window_ms
    per_batch = max(1, hop_batch // max(1, len(run.machines))) * w
    by_time = rules.sort_values("window_start_ms", kind="stable")
    times = by_time["window_start_ms"].to_numpy(np.int64)
    out = []
    for lo in range(first_ms, run.end_ms, per_batch):
        hi = min(lo + per_batch, run.end_ms)
        a = np.searchsorted(times, lo - (history_windows - 1) * w, side="left")
        b = np.searchsorted(times, hi, side="left")
        long, current = build_hops(by_time.iloc[a:b], lo, hi, history_windows, w)
        if len(current):
            verdicts = scorer.score(long, current)
            out.append(
                pd.concat(
                    [current[["equipment_id", "window_start_ms"]], verdicts[[*VERDICT_KEEP, *scorer.score_names]]],
                    axis=1,
                )
            )
        if advance is not None:
            advance(1)
    empty = pd.DataFrame(columns=["equipment_id", "window_start_ms", *VERDICT_KEEP, *scorer.score_names])
    return pd.concat(out, ignore_index=True) if out else empty


# -- 6. metrics --------------------------------------------------------------------------------------------
def faults_frame(labels: Sequence[FaultLabel]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "machine": [lb.machine for lb in labels],
            "category": [fault_category(lb) for lb in labels],
            "fault_type": [lb.fault_type for lb in labels],
            "equipment_type": [lb.equipment_type for lb in labels],
            "sensors": [",".join(lb.sensors) for lb in labels],
            "start_ms": np.array([lb.start_ms for lb in labels], dtype=np.int64),
            "end_ms": np.array([lb.end_ms for lb in labels], dtype=np.int64),
        }
    )


def detector_breakdown(windows: pd.DataFrame, verdicts: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Per detector name: flagged windows it fired in by role (fault / grace / normal = FP), and the detected
    events whose first flagged window it fired in (total and per fault type)."""
    flagged = windows.loc[windows["flagged"], ["machine", "window_start_ms", "role"]]
    fired = flagged.merge(
        verdicts[["equipment_id", "window_start_ms", "detectors"]].rename(columns={"equipment_id": "machine"}),
        on=["machine", "window_start_ms"],
        how="left",
    )
    fired = fired.explode("detectors").dropna(subset=["detectors"])
    by_role = pd.crosstab(fired["detectors"], fired["role"]).reindex(columns=["fault", "grace", "normal"], fill_value=0)
    by_role.columns = ["fault_windows", "grace_windows", "fp_windows"]
    first = events.loc[events["detected"], ["machine", "category", "first_window_ms"]].rename(
        columns={"first_window_ms": "window_start_ms"}
    )
    first = first.merge(
        verdicts[["equipment_id", "window_start_ms", "detectors"]].rename(columns={"equipment_id": "machine"}),
        on=["machine", "window_start_ms"],
        how="left",
    )
    first = first.explode("detectors").dropna(subset=["detectors"])
    per_type = pd.crosstab(first["detectors"], first["category"])
    out = by_role.join(per_type, how="outer").fillna(0).astype(np.int64)
    out.insert(3, "first_detections", per_type.sum(axis=1).reindex(out.index).fillna(0).astype(np.int64))
    out.index.name = "detector"
    return out.sort_values(["fault_windows", "fp_windows"], ascending=False)


# -- the whole evaluation ----------------------------------------------------------------------------------
def evaluate_sim(
    settings: Settings, options: SimOptions | None = None, console: Console | None = None
) -> SimEvaluation:
    """Simulate, window, apply the rules, train, score with the job's scorer and compute the scorecard."""
    options = options or SimOptions()
    console = console or Console(stderr=True)
    if not 0.0 < options.train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {options.train_fraction}")
    scoring = settings.scoring
    window_ms = settings.window.size_ms
    history = min(options.history, scoring.history_windows)
    grace_ms = scoring.history_windows * window_ms if options.grace_ms is None else options.grace_ms
    n_windows = int(np.ceil(options.duration_s * 1000 / window_ms - 1e-9))
    train_end = options.start_ms + int(n_windows * options.train_fraction) * window_ms
    config = load_rules(scoring.rules_path)
    timings: dict[str, float] = {}
    progress = Progress(
        TextColumn("[bold]sim[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress, tempfile.TemporaryDirectory(prefix="vigil-sim-models-") as models_dir:
        t0 = time.perf_counter()
        n_ticks = int(np.ceil(options.duration_s / settings.simulator.batch_interval_s - 1e-9))
        what = f"simulate {options.machines} machines, {options.duration_s / 60:g} min"
        task = progress.add_task(what, total=n_ticks)
        run = simulate(settings, options, train_end, lambda k: progress.advance(task, k))
        timings["simulate + window stats"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rules = rule_results(run.stats, config)
        timings["rules"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        registry = ModelRegistry(Path(models_dir))
        types = sorted(run.stats["equipment_type"].unique())
        task = progress.add_task("train models (first part, faults excluded)", total=len(types))
        models = train_models(
            run,
            train_end,
            registry,
            history,
            lambda k: progress.advance(task, k),
            alarm_rate=scoring.alarm_rate_per_machine_hour,
        )
        timings["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        expected = {etype: sorted(sensors) for etype, sensors in config.equipment_types.items()}
        model_set = ModelSet(
            registry,
            expected.get,
            max_history=scoring.history_windows,
            window_ms=window_ms,
            poll_s=float("inf"),
            threads=scoring.onnx_threads,
        )
        scorer = WindowScorer(
            expected,
            model_set,
            ScoringConfig(
                window_ms=window_ms,
                dead_after_ms=scoring.dead_after_ms,
                critical_ratio=scoring.critical_ratio,
                model_persistence=scoring.model_persistence_windows,
            ),
        )
        per_batch = max(1, options.hop_batch // max(1, options.machines)) * window_ms
        task = progress.add_task("score hops (WindowScorer)", total=int(np.ceil((run.end_ms - train_end) / per_batch)))
        verdicts = score_run(
            run, rules, train_end, scorer, scoring.hop_windows, options.hop_batch, lambda k: progress.advance(task, k)
        )
        timings["score"] = time.perf_counter() - t0
        refused = model_set.refused()
        if refused:
            raise RuntimeError(f"the scorer refused trained models: {refused}")

    t0 = time.perf_counter()
    starts = np.arange(train_end, run.end_ms, window_ms, dtype=np.int64)
    ids = run.machines["equipment_id"].to_numpy()
    windows = pd.DataFrame({"machine": np.repeat(ids, len(starts)), "window_start_ms": np.tile(starts, len(ids))})
    v = verdicts.loc[verdicts["emit"].to_numpy(bool)]
    flagged = v.loc[v["is_anomaly"].to_numpy(bool), ["equipment_id", "window_start_ms"]]
    keys = pd.MultiIndex.from_frame(windows[["machine", "window_start_ms"]])
    windows["flagged"] = keys.isin(pd.MultiIndex.from_frame(flagged))
    faults = faults_frame(run.labels)
    card = fault_scorecard(windows, faults, window_ms, grace_ms)
    windows["role"] = card.window_role
    breakdown = detector_breakdown(windows, v, card.events)
    timings["metrics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    alerts = replay_alerts(verdicts, run.machines, settings, window_ms)
    pages = page_scorecard(alerts, faults, train_end, run.end_ms, run.machines)
    timings["pages"] = time.perf_counter() - t0

    hours = len(windows) * window_ms / 3_600_000
    info = {
        "machines": options.machines,
        "equipment_types": {
            str(k): int(c) for k, c in run.machines["equipment_type"].value_counts().sort_index().items()
        },
        "simulated_s": (run.end_ms - run.start_ms) / 1000,
        "samples": run.samples,
        "stat_rows": len(run.stats),
        "train_windows": int((train_end - run.start_ms) // window_ms),
        "scored_windows": len(windows),
        "scored_machine_hours": hours,
        "hops": len(verdicts),
        "verdicts": int(len(v)),
        "flagged_windows": int(windows["flagged"].sum()),
        "faults_labelled": len(faults),
        "faults_scored": len(card.events),
        "fault_rate": settings.simulator.fault_rate_per_machine_hour
        if options.fault_rate is None
        else options.fault_rate,
        "fp_per_machine_hour": card.fp_windows / hours if hours else float("nan"),
        "grace_ms": grace_ms,
        "history_windows": scoring.history_windows,
        "model_history": history,
        "rules_path": str(scoring.rules_path),
        "models": models,
    }
    return SimEvaluation(options, card, breakdown, verdicts, windows, info, timings_s=timings, run=run, pages=pages)


# -- output ------------------------------------------------------------------------------------------------
PRECISION_NOTE = (
    "Window = one (machine, 5-s window) of the scored part. Fault windows overlap a labelled fault; grace windows "
    "only its [end, end + grace) tail (neither counted as FP nor TN); FP = flagged windows outside both, counted "
    "once overall. Per-type precision is one-vs-normal: TP_type / (TP_type + all FP). Event recall: the fault's "
    "machine has a flagged window overlapping [start, end + grace); delay = end of that first window - start."
)


def _fmt(x: float, pct: bool = False, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f} %" if pct else f"{x:.{digits}f}"


def print_sim_result(result: SimEvaluation, console: Console) -> None:
    info, card = result.info, result.scorecard
    types = ", ".join(f"{k} {v}" for k, v in info["equipment_types"].items())
    console.print(
        f"[bold]Simulator scorecard[/]: {info['machines']} machines ({types}), "
        f"{info['simulated_s'] / 60:g} min simulated (seed {result.options.seed}), {info['samples']:,} samples -> "
        f"{info['stat_rows']:,} window-stat rows; models trained on the first {info['train_windows']} windows, "
        f"{info['scored_windows']:,} (machine, window) pairs scored ({info['hops']:,} hops, history "
        f"{info['history_windows']}); {info['faults_scored']} of {info['faults_labelled']} labelled faults start in "
        f"the scored part (random rate {info['fault_rate']:g}/machine-hour plus injected silences); "
        f"grace {info['grace_ms'] / 1000:g} s."
    )
    if result.pages is not None:
        print_page_scorecard(result.pages, console)
    table = Table(title="Per fault type (window and event level)", caption=PRECISION_NOTE, caption_justify="left")
    for col in (
        "fault type",
        "events",
        "found",
        "event recall",
        "delay p50 s",
        "p95 s",
        "fault windows",
        "TP",
        "FN",
        "precision*",
        "recall",
        "F1",
    ):
        table.add_column(col, justify="left" if col == "fault type" else "right")
    for name, r in result.scorecard.by_type.iterrows():
        style = "bold" if name == "all" else None
        table.add_row(
            str(name),
            f"{int(r['events'])}",
            f"{int(r['detected'])}",
            _fmt(r["event_recall"], pct=True),
            _fmt(r["delay_p50_s"]),
            _fmt(r["delay_p95_s"]),
            f"{int(r['fault_windows']):,}",
            f"{int(r['tp']):,}",
            f"{int(r['fn']):,}",
            _fmt(r["precision"], digits=3),
            _fmt(r["recall"], digits=3),
            _fmt(r["f1"], digits=3),
            style=style,
        )
    console.print(table)
    console.print(
        f"False positives: {card.fp_windows:,} of {card.negative_windows:,} normal windows flagged "
        f"({_fmt(card.fp_rate, pct=True, digits=2)}; {info['fp_per_machine_hour']:.1f} per machine-hour); "
        f"grace tails: {card.grace_flagged:,} of {card.grace_windows:,} windows flagged (not counted)."
    )
    if "dead_machine" in card.by_type.index:
        console.print(
            "dead_machine: a silent machine has no windows to flag; the job emits one dead_machine verdict per "
            "silence (after scoring.dead_after_ms), so read its event recall and delay, not its window recall."
        )
    det = Table(title="Which detectors fired (a flagged window can fire several)")
    left = ("detector", "first detections by type")
    for col in ("detector", "fault windows", "grace windows", "FP windows", "first detections", left[1]):
        det.add_column(col, justify="left" if col in left else "right")
    categories = [
        c
        for c in result.detectors.columns
        if c not in ("fault_windows", "grace_windows", "fp_windows", "first_detections")
    ]
    for name, r in result.detectors.iterrows():
        by_type = ", ".join(f"{c} {int(r[c])}" for c in categories if r[c])
        det.add_row(
            str(name),
            f"{r['fault_windows']:,}",
            f"{r['grace_windows']:,}",
            f"{r['fp_windows']:,}",
            str(r["first_detections"]),
            by_type,
        )
    console.print(det)
    models = Table(title="Models (trained by operations.training.detectors.train_type on the first part)")
    for col in ("type", "detector", "threshold", "normal windows", "excluded (fault)", "alarm rate (held-out normal)"):
        models.add_column(col, justify="left" if col in ("type", "detector") else "right")
    for m in info["models"]:
        models.add_row(
            m["equipment_type"],
            m["detector"],
            f"{m['threshold']:.4g}",
            f"{m['normal_windows']:,}",
            f"{m['excluded_fault']:,}",
            _fmt(m["alarm_rate_test"], pct=True, digits=2),
        )
    console.print(models)
    console.print(
        "Runtime: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items())
        + f" (total {sum(result.timings_s.values()):.1f} s)"
    )


def summary_dict(result: SimEvaluation) -> dict[str, Any]:
    """The scorecard as plain JSON-able data (for --output)."""

    def clean(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return json.loads(frame.reset_index().to_json(orient="records"))

    card = result.scorecard
    return {
        "options": asdict(result.options),
        "info": result.info,
        "by_type": clean(card.by_type),
        "false_positives": {
            "fp_windows": card.fp_windows,
            "negative_windows": card.negative_windows,
            "fp_rate": card.fp_rate,
            "grace_windows": card.grace_windows,
            "grace_flagged": card.grace_flagged,
        },
        "detectors": clean(result.detectors),
        "events": json.loads(card.events.to_json(orient="records")),
        "timings_s": result.timings_s,
        "pages": page_summary(result.pages) if result.pages is not None else None,
        "definitions": PRECISION_NOTE,
    }
