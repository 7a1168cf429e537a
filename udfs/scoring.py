"""One verdict per (machine, window): model scores, rule hits and silence, combined (vectorised).

The anomaly-scoring job hands this module a batch of *hops*: for each machine, the statistics of its
last few 5-s windows (the current one and its history, from a Flink HOP window, so history is Flink
state and survives restarts), with the per-sensor rule results the JVM already computed. ``vigil
evaluate --dataset sim`` calls the same :meth:`WindowScorer.score` on replayed windows, so the
benchmark measures exactly what runs in the job.

Input, long format (one row per sensor and window of a hop; ``group`` is the hop's row in ``current``):
``group, sensor, window_start_ms, count, avg, stddev, min, max, rule_hits, zratio`` where
``rule_hits`` is a comma-separated list of the rules the sensor broke in that window and ``zratio`` is
``|z| / zscore_max`` (NaN while the EWMA baseline warms up). ``current`` has one row per hop:
``equipment_id, site, equipment_type, window_start_ms`` (the window being judged).

Verdict (see vigil/contracts.py ANOMALY_JSON_SCHEMA): every detector's score normalised to its own
threshold (1.0 = at the limit; one column each here, the ``scores`` map in the record), the
detectors that fired, a severity, the sensors that contributed most and one readable line. A hop
whose current window has no data is a silent machine: it yields one ``dead_machine`` verdict when the
silence first reaches ``dead_after_ms`` and nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors import job_detectors
from onnx_models.features import window_features
from udfs.model_set import LiveModel, ModelSet
from vigil.contracts import RULES_SCORE

LONG_COLUMNS = ("group", "sensor", "window_start_ms", "count", "avg", "stddev", "min", "max", "rule_hits", "zratio")
CURRENT_COLUMNS = ("equipment_id", "site", "equipment_type", "window_start_ms")
# A verdict frame has these columns plus one float column per score (see WindowScorer.score_names).
VERDICT_COLUMNS = (
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
THRESHOLD_RULES = ("threshold_min", "threshold_max")
# How strongly each kind of evidence points at a sensor when ranking contributors. Hard evidence about
# one sensor (outside its envelope, frozen, losing samples, silent) outranks any soft evidence; soft
# evidence (a jump, a z-score, a model's per-sensor contribution) is ranked by its size relative to its
# own limit, so a z-score of 3x its limit and a PCA contribution of 3x the model's limit weigh the same.
_HARD = 1e6
_RULE_WEIGHT = {
    "threshold_min": _HARD + 3,
    "threshold_max": _HARD + 3,
    "stuck": _HARD + 2,
    "count_drop": _HARD + 1,
    "rate_of_change": 1.0,
    "zscore": 1.0,
}
_DEAD_SENSOR_WEIGHT = _HARD


@dataclass(frozen=True)
class ScoringConfig:
    window_ms: int = 5000
    dead_after_ms: int = 15_000  # no data for this long: dead sensor / dead machine
    critical_ratio: float = 2.0  # a model score this many times its threshold is critical on its own
    top_n: int = 3
    # A model fires when above its threshold in this many consecutive windows, or at once at critical_ratio.
    model_persistence: int = 1


def _lists(groups: np.ndarray, values: np.ndarray, n: int) -> list[list[str]]:
    """Group ``values`` into one list per group id 0..n-1 (order kept); empty lists for absent ids."""
    out: list[list[str]] = [[] for _ in range(n)]
    if len(groups):
        order = np.argsort(groups, kind="stable")
        g, v = groups[order], values[order]
        cuts = np.flatnonzero(np.diff(g)) + 1
        for gid, chunk in zip(g[np.r_[0, cuts]], np.split(v, cuts), strict=True):
            out[int(gid)] = chunk.tolist()
    return out


class WindowScorer:
    """Combines model scores, rule hits and silence into verdicts; models come from a :class:`ModelSet`."""

    def __init__(
        self,
        expected_sensors: dict[str, list[str]],
        models: ModelSet | None = None,
        config: ScoringConfig | None = None,
    ) -> None:
        self.expected_sensors = {k: sorted(v) for k, v in expected_sensors.items()}
        self.models = models
        self.config = config or ScoringConfig()
        # The models that may score (each has a score column, NaN where it did not score), then the rules'.
        self.model_names: tuple[str, ...] = models.detectors if models is not None else job_detectors()
        self.score_names: tuple[str, ...] = (*self.model_names, RULES_SCORE)

    def score(self, long: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
        """One verdict row per ``current`` row (``emit`` False for hops that say nothing new)."""
        cfg = self.config
        n = len(current)
        current = current.reset_index(drop=True)
        group = long["group"].to_numpy(np.int64)
        window_start = long["window_start_ms"].to_numpy(np.int64)
        cur_start = current["window_start_ms"].to_numpy(np.int64)
        cur_end = cur_start + cfg.window_ms
        is_current = window_start == cur_start[group]
        window_end = window_start + cfg.window_ms

        last_seen = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last_seen, group, window_end)
        has_current = np.zeros(n, dtype=bool)
        has_current[group[is_current]] = True
        silence = cur_end - last_seen
        dead_machine = ~has_current & (silence >= cfg.dead_after_ms) & (silence - cfg.window_ms < cfg.dead_after_ms)

        out = pd.DataFrame(
            {
                "emit": has_current | dead_machine,
                "kind": np.where(dead_machine, "dead_machine", "window"),
                **dict.fromkeys(self.score_names, np.nan),
                "last_seen_ms": np.where(has_current, cur_end, last_seen),
            }
        )
        weights: list[pd.DataFrame] = []  # (group, sensor, weight): evidence per sensor for ranking

        # -- rules (computed in the JVM per sensor; here only gathered) ------------------------------
        cur_rows = long.loc[is_current]
        zratio = cur_rows["zratio"].to_numpy(np.float64)
        cur_group = group[is_current]
        rules_score = np.full(n, -np.inf)
        np.maximum.at(rules_score, cur_group, np.where(np.isfinite(zratio), zratio, -np.inf))
        out[RULES_SCORE] = np.where(np.isfinite(rules_score), rules_score, np.nan)
        weights.append(pd.DataFrame({"group": cur_group, "sensor": cur_rows["sensor"].to_numpy(), "weight": zratio}))
        hits = cur_rows.assign(group=cur_group, rule=cur_rows["rule_hits"].fillna(""))
        hits = hits.loc[hits["rule"] != "", ["group", "sensor", "rule"]]
        hits = hits.assign(rule=hits["rule"].str.split(",")).explode("rule")
        hits = hits.loc[hits["rule"].str.len() > 0].drop_duplicates(["group", "sensor", "rule"])
        hit_groups = hits["group"].to_numpy(np.int64)
        rule_hits = _lists(hit_groups, (hits["sensor"] + ":" + hits["rule"]).to_numpy(), n)
        weights.append(
            pd.DataFrame(
                {
                    "group": hit_groups,
                    "sensor": hits["sensor"].to_numpy(),
                    "weight": hits["rule"].map(_RULE_WEIGHT).fillna(1.0).to_numpy(),
                }
            )
        )

        # -- dead sensors: expected (config/model) or recently seen, but silent for dead_after_ms ----
        dead_pairs = self._dead_sensors(long, current, group, window_end, cur_end, has_current)
        dead_sensors = _lists(dead_pairs["group"].to_numpy(np.int64), dead_pairs["sensor"].to_numpy(), n)
        weights.append(dead_pairs.assign(weight=_DEAD_SENSOR_WEIGHT))

        # -- models, per equipment type ----------------------------------------------------------------
        versions = np.full(n, "", dtype=object)
        model_cols = list(self.model_names)
        model_fired = {c: np.zeros(n, dtype=bool) for c in model_cols}
        if self.models is not None:
            for etype in pd.unique(current.loc[has_current, "equipment_type"]):
                models = self.models.models_for(str(etype))
                if not models:
                    continue
                in_type = (current["equipment_type"].to_numpy() == etype) & has_current
                versions[in_type] = self.models.versions(str(etype))
                rows = long.loc[in_type[group]]
                for model in models:
                    ratio, persistent, contrib = self._score_model(model, rows, cur_start)
                    out.loc[ratio.index, model.detector] = ratio.to_numpy()
                    model_fired[model.detector][persistent.index] = persistent.to_numpy()
                    if contrib is not None:
                        weights.append(contrib)

        # -- combine ---------------------------------------------------------------------------------
        any_model = np.logical_or.reduce([model_fired[c] for c in model_cols] + [np.zeros(n, dtype=bool)])
        any_rule = np.bincount(hit_groups, minlength=n) > 0
        any_dead_sensor = np.bincount(dead_pairs["group"].to_numpy(np.int64), minlength=n) > 0
        threshold_hit = np.bincount(hit_groups[hits["rule"].isin(THRESHOLD_RULES).to_numpy()], minlength=n) > 0
        families = any_model.astype(int) + any_rule.astype(int) + any_dead_sensor.astype(int)
        max_model = np.nanmax(np.vstack([out[c].to_numpy() for c in model_cols] + [np.full(n, -np.inf)]), axis=0)
        critical = dead_machine | threshold_hit | (families >= 2) | (max_model >= cfg.critical_ratio)
        is_anomaly = dead_machine | (families > 0)
        out["is_anomaly"] = is_anomaly
        out["severity"] = np.where(critical & is_anomaly, "critical", np.where(is_anomaly, "warning", "normal"))
        scores = np.vstack([out[c].to_numpy() for c in self.score_names])
        out["score"] = np.where(np.isfinite(scores), scores, 0.0).max(axis=0, initial=0.0)

        # Which detectors fired, as (group, name) pairs in a fixed order: models, rules, silence.
        rule_pairs = hits[["group", "rule"]].drop_duplicates().sort_values(["group", "rule"])
        fired = pd.concat(
            [
                *(pd.DataFrame({"group": np.flatnonzero(model_fired[c]), "name": c, "rank": 0}) for c in model_cols),
                pd.DataFrame(
                    {"group": rule_pairs["group"].to_numpy(np.int64), "name": rule_pairs["rule"].to_numpy(), "rank": 1}
                ),
                pd.DataFrame({"group": np.flatnonzero(any_dead_sensor), "name": "dead_sensor", "rank": 2}),
                pd.DataFrame({"group": np.flatnonzero(dead_machine), "name": "dead_machine", "rank": 3}),
            ],
            ignore_index=True,
        ).sort_values(["group", "rank"], kind="stable")
        out["detectors"] = _lists(fired["group"].to_numpy(np.int64), fired["name"].to_numpy(), n)
        out["rule_hits"] = rule_hits
        out["dead_sensors"] = dead_sensors
        out["top_sensors"] = self._top_sensors(weights, is_anomaly & ~dead_machine, n)
        out["model_versions"] = versions
        out["summary"] = self._summaries(out, current, silence)
        return out[[*VERDICT_COLUMNS, *self.score_names]]

    # -- pieces ----------------------------------------------------------------------------------------
    def _dead_sensors(
        self,
        long: pd.DataFrame,
        current: pd.DataFrame,
        group: np.ndarray,
        window_end: np.ndarray,
        cur_end: np.ndarray,
        has_current: np.ndarray,
    ) -> pd.DataFrame:
        seen = (
            pd.DataFrame({"group": group, "sensor": long["sensor"].to_numpy(), "end": window_end})
            .groupby(["group", "sensor"], as_index=False, sort=False)["end"]
            .max()
        )
        alive = np.flatnonzero(has_current)
        expected = [
            pd.DataFrame({"group": np.repeat(alive[types == t], len(s)), "sensor": np.tile(s, int((types == t).sum()))})
            for types in [current["equipment_type"].to_numpy()[alive]]
            for t, s in self.expected_sensors.items()
            if (types == t).any()
        ]
        pairs = pd.concat([seen[["group", "sensor"]], *expected], ignore_index=True).drop_duplicates()
        pairs = pairs.loc[has_current[pairs["group"].to_numpy(np.int64)]]
        pairs = pairs.merge(seen, on=["group", "sensor"], how="left")
        last = pairs["end"].to_numpy(np.float64)
        silent_for = cur_end[pairs["group"].to_numpy(np.int64)] - np.where(np.isnan(last), -np.inf, last)
        dead = pairs.loc[silent_for >= self.config.dead_after_ms, ["group", "sensor"]]
        return dead.sort_values(["group", "sensor"]).reset_index(drop=True)

    def _score_model(
        self, model: LiveModel, rows: pd.DataFrame, cur_start: np.ndarray
    ) -> tuple[pd.Series, pd.Series, pd.DataFrame | None]:
        """Score each hop's current window (and the ones persistence looks back at) with one model.

        Returns the current window's score over the threshold per group, whether the model fires (above
        the threshold in each of the last ``model_persistence`` windows, all complete), and the current
        window's per-sensor contributions.
        """
        persistence = self.config.model_persistence
        frame = rows.rename(columns={"group": "equipment_id", "window_start_ms": "window_start"})
        feats = window_features(frame, sensors=model.sensors, history=model.history)
        idx = feats.index
        groups = idx["equipment_id"].to_numpy(np.int64)
        age = (cur_start[groups] - idx["window_start"].to_numpy(np.int64)) // self.config.window_ms
        pick = (age >= 0) & (age < persistence) & idx["complete"].to_numpy()
        empty = pd.Series(dtype=np.float64)
        if not pick.any():
            return empty, pd.Series(dtype=bool), None
        parts = model.loaded.score(feats.matrix[pick])
        ratio = np.nan_to_num(parts["score"].astype(np.float64), nan=np.inf) / model.threshold
        picked, picked_age = groups[pick], age[pick]
        above = pd.Series(ratio > 1.0, index=picked).groupby(level=0)
        persistent = (above.sum() == persistence) & (above.size() == persistence)  # every window present, all above
        now = picked_age == 0
        current = pd.Series(ratio[now], index=picked[now])
        contrib = None
        if "contrib" in parts:
            per_sensor = np.clip(parts["contrib"][now].astype(np.float64), 0.0, None) @ model.sensor_matrix
            contrib = pd.DataFrame(
                {
                    "group": np.repeat(picked[now], len(model.sensors)),
                    "sensor": np.tile(model.sensors, int(now.sum())),
                    "weight": per_sensor.ravel(),
                }
            )
        persistent = persistent.reindex(current.index, fill_value=False)  # fires only with a current score
        # A score at critical_ratio x the threshold is no noise: it fires at once, without waiting.
        persistent |= current >= self.config.critical_ratio
        return current, persistent, contrib

    def _top_sensors(self, weights: Iterable[pd.DataFrame], anomalous: np.ndarray, n: int) -> list[list[str]]:
        w = pd.concat([f for f in weights if len(f)], ignore_index=True) if any(len(f) for f in weights) else None
        if w is None:
            return [[] for _ in range(n)]
        w = w.loc[np.isfinite(w["weight"].to_numpy(np.float64)) & (w["weight"] > 0)]
        w = w.loc[anomalous[w["group"].to_numpy(np.int64)]]
        w = w.groupby(["group", "sensor"], as_index=False)["weight"].max()
        w = w.sort_values(["group", "weight", "sensor"], ascending=[True, False, True])
        w = w.groupby("group", sort=False).head(self.config.top_n)
        return _lists(w["group"].to_numpy(np.int64), w["sensor"].to_numpy(), n)

    def _summaries(self, out: pd.DataFrame, current: pd.DataFrame, silence: np.ndarray) -> pd.Series:
        summary = pd.Series("", index=out.index, dtype=object)
        anomalous = out["is_anomaly"].to_numpy() & (out["kind"].to_numpy() == "window")
        if anomalous.any():
            sub = out.loc[anomalous]
            models = ""
            for col in self.model_names:
                fired = sub["detectors"].map(lambda names, c=col: c in names)
                models = models + np.where(fired, f"; {col} " + sub[col].round(2).astype(str) + "x limit", "")
            text = (
                sub["severity"]
                + ": "
                + sub["detectors"].str.join(", ")
                + np.where(sub["rule_hits"].str.len() > 0, " (" + sub["rule_hits"].str.join(", ") + ")", "")
                + models
                + np.where(sub["top_sensors"].str.len() > 0, "; sensors: " + sub["top_sensors"].str.join(", "), "")
            )
            summary.loc[anomalous] = text.to_numpy()
        dead = out["kind"].to_numpy() == "dead_machine"
        if dead.any():
            summary.loc[dead] = (
                "critical: no data from "
                + current.loc[dead, "equipment_id"].astype(str)
                + " for "
                + (silence[dead] // 1000).astype(str)
                + " s"
            ).to_numpy()
        return summary
