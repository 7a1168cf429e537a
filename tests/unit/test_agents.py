"""The agents on small constructed episodes, and the metrics of `vigil evaluate --agents` on hand-computed cases."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents import registry as agent_registry
from agents.base import AgentContext, Episode, Insight
from agents.compliance import ComplianceAgent
from agents.diagnostic import MODEL_NAME, REGISTRY_TYPE, DiagnosticAgent
from agents.episodes import build_episodes
from agents.features import FEATURE_NAMES, episode_matrix, sensor_features
from agents.maintenance import MaintenanceAgent, load_knowledge_base, maintenance_plan, time_to_limit
from agents.root_cause import RootCauseAgent
from edge.simulator.faults import FaultLabel
from onnx_models.registry import ModelRegistry
from operations.evaluate.agents_eval import failure_time_ms, macro_f1, root_cause_hits, shared_cause_scores
from operations.training.agents import fit_diagnostic
from vigil.settings import Settings

W = 5000
T0 = 1_795_564_800_000


def stats(
    sensors: dict[str, np.ndarray], noise: dict[str, np.ndarray] | None = None, count: int = 10, start: int = T0
) -> pd.DataFrame:
    """Long window statistics from one mean per window per sensor."""
    rows = []
    for sensor, means in sensors.items():
        sd = (noise or {}).get(sensor, np.full(len(means), 0.1))
        for k, (m, s) in enumerate(zip(means, sd, strict=True)):
            rows.append(
                {
                    "window_start_ms": start + k * W,
                    "sensor": sensor,
                    "count": count,
                    "avg": m,
                    "stddev": s,
                    "min": m - 2 * s,
                    "max": m + 2 * s,
                }
            )
    return pd.DataFrame(rows)


def episode(
    frame: pd.DataFrame,
    start_window: int,
    end_window: int,
    machine: str = "pump-0001",
    etype: str = "pump",
    line: str = "line-1",
    kinds: tuple[str, ...] = ("window",),
) -> Episode:
    n = end_window - start_window
    verdicts = pd.DataFrame(
        {
            "window_start_ms": [T0 + (start_window + k) * W for k in range(n)],
            "kind": list(kinds) * n if len(kinds) == 1 else list(kinds),
            "severity": "warning",
            "dead_sensors": [[] for _ in range(n)],
        }
    )
    return Episode(machine, "site-1", etype, T0 + start_window * W, T0 + end_window * W, W, frame, verdicts, line)


def noisy(n: int, level: float, seed: int, sd: float = 0.1) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0, sd, n)


# -- episodes --------------------------------------------------------------------------------------------
def test_windows_within_the_gap_merge_and_a_longer_gap_splits() -> None:
    flagged = [0, 1, 2, 5, 6, 12]  # gap of 2 normal windows (3, 4) joins; 7..11 (5 windows) splits
    v = pd.DataFrame(
        {
            "equipment_id": "m1",
            "window_start_ms": [T0 + k * W for k in range(14)],
            "is_anomaly": [k in flagged for k in range(14)],
            "site": "s",
            "equipment_type": "pump",
        }
    )
    other = v.assign(equipment_id="m2", is_anomaly=[k == 0 for k in range(14)])
    s = stats({"flow": noisy(14, 10, 1)}).assign(equipment_id="m1")
    eps = build_episodes(pd.concat([v, other]), s, W, gap_windows=2, baseline_windows=2, now_ms=T0 + 14 * W)
    got = [(e.equipment_id, (e.start_ms - T0) // W, (e.end_ms - T0) // W, len(e.verdicts), e.closed) for e in eps]
    assert got == [("m1", 0, 7, 5, True), ("m1", 12, 13, 1, False), ("m2", 0, 1, 1, True)]
    second = eps[1]
    assert sorted(second.stats["window_start_ms"].unique()) == [T0 + k * W for k in (10, 11, 12)]  # 2 baseline
    assert eps[2].stats.empty  # no statistics of m2


# -- features and diagnosis rules ------------------------------------------------------------------------
def test_features_see_a_shift_a_frozen_sensor_a_silent_one_and_a_ramp() -> None:
    n, start = 40, 20
    flow = noisy(n, 100, 1)
    flow[start:] += 5.0  # a step of 50 baseline deviations
    ramp = noisy(n, 50, 2)
    ramp[start:] += np.linspace(0, 10, n - start)
    frozen_sd = np.full(n, 0.1)
    frozen_sd[start:] = 0.0
    frame = stats({"flow": flow, "bearing_temp": ramp, "speed": noisy(n, 1500, 3)}, noise={"speed": frozen_sd})
    frame = pd.concat([frame, stats({"motor_current": noisy(start, 30, 4)})])  # silent during the episode
    f = sensor_features([episode(frame, start, n)]).set_index("sensor")
    assert f.loc["flow", "shift_z"] > 20 and abs(f.loc["flow", "ramp_z"]) < 5
    assert f.loc["bearing_temp", "ramp_z"] > 20
    assert f.loc["speed", "stuck"] == 1.0 and f.loc["flow", "stuck"] == 0.0
    assert f.loc["motor_current", "count_ratio"] == 0.0
    assert f.loc["flow", "onset_ms"] == T0 + start * W
    x = episode_matrix([episode(frame, start, n)])
    assert x.shape == (1, len(FEATURE_NAMES)) and np.isfinite(x).all()
    assert x[0, FEATURE_NAMES.index("count_ratio_min")] == 0.0


def test_rules_diagnose_offline_machines_silent_and_frozen_sensors_without_a_model() -> None:
    n, start = 30, 20
    base = {"flow": noisy(n, 100, 1), "speed": noisy(n, 1500, 2)}
    frozen = np.full(n, 0.1)
    frozen[start:] = 0.0
    stuck = episode(stats(base, noise={"speed": frozen}), start, n)
    silent = episode(pd.concat([stats({"flow": noisy(n, 100, 1)}), stats({"speed": noisy(start, 1500, 2)})]), start, n)
    offline = episode(stats(base), start, start + 1, kinds=("dead_machine",))
    step = dict(base)
    step["flow"] = np.where(np.arange(n) >= start, base["flow"] + 5, base["flow"])
    unknown = episode(stats(step), start, n)
    out = DiagnosticAgent(registry=None).analyse([stuck, silent, offline, unknown], AgentContext())
    assert [(i.fault_type, i.sensors[:1]) for i in out] == [
        ("sensor_stuck", ("speed",)),
        ("sensor_dead", ("speed",)),
        ("machine_offline", ()),
        ("unknown", ("flow",)),
    ]
    assert out[0].details["by"] == "rule" and out[3].confidence == 0.0
    assert "Sensor stuck (speed)" in out[0].title


def test_the_classifier_is_loaded_from_the_registry_and_scores_in_one_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(FEATURE_NAMES))).astype(np.float32)
    col = FEATURE_NAMES.index("vibration_shift")
    y = np.where(x[:, col] > 0, "bearing_wear", "no_fault")
    model_bytes, metadata = fit_diagnostic(x, y)
    registry = ModelRegistry(tmp_path)
    registry.register(REGISTRY_TYPE, MODEL_NAME, model_bytes, metadata)
    agent = DiagnosticAgent(registry)
    probe = np.zeros((2, len(FEATURE_NAMES)), dtype=np.float32)
    probe[:, col] = [3.0, -3.0]
    names, confidence = agent.classify(probe)
    assert list(names) == ["bearing_wear", "no_fault"] and (confidence > 0.8).all()
    assert agent.model_version == "v0001"


# -- root cause ------------------------------------------------------------------------------------------
def test_root_cause_ranks_the_moved_sensor_first_and_orders_by_onset() -> None:
    n, start = 40, 20
    a, b = noisy(n, 10, 1), noisy(n, 200, 2)
    a[start - 2 :] += 2.0  # left its baseline 2 windows before the episode
    b[start + 3 :] += 50.0  # moved later, but much further
    frame = stats({"vibration_rms": a, "discharge_pressure": b, "flow": noisy(n, 100, 3)})
    out = RootCauseAgent().analyse([episode(frame, start, n)], AgentContext())
    assert len(out) == 1
    assert out[0].sensors[0] == "discharge_pressure"
    assert out[0].details["onset_order"][:2] == ["vibration_rms", "discharge_pressure"]
    assert "first to move: vibration_rms" in out[0].title


def test_episodes_of_one_line_starting_together_are_one_shared_cause() -> None:
    n, start = 30, 20
    current = noisy(n, 30, 1)
    current[start:] += 8.0
    frame = stats({"motor_current": current, "flow": noisy(n, 100, 2)})
    together = [episode(frame, start, n, machine=f"pump-000{i}") for i in range(1, 4)]
    other_line = episode(frame, start, n, machine="pump-0009", line="line-2")
    later = Episode(
        "pump-0007", "site-1", "pump", T0 + 10 * 60_000, T0 + 11 * 60_000, W, frame, together[0].verdicts, "line-1"
    )
    shared = [
        i
        for i in RootCauseAgent(min_machines=3).analyse([*together, other_line, later], AgentContext())
        if i.kind == "shared_cause"
    ]
    assert len(shared) == 1
    assert shared[0].details["machines"] == ["pump-0001", "pump-0002", "pump-0003"]
    assert not [i for i in RootCauseAgent().analyse(together[:2], AgentContext()) if i.kind == "shared_cause"]


def test_the_streaming_shared_cause_is_one_identity_whichever_machine_reports_it() -> None:
    n, start = 30, 20
    frame = stats({"motor_current": noisy(n, 30, 1), "flow": noisy(n, 100, 2)})
    mine = episode(frame, start, n, machine="pump-0001")  # line-1, starts at window 20
    t = mine.start_ms
    neighbours = pd.DataFrame(
        {
            "equipment_id": ["pump-0002", "pump-0003", "pump-0004", "pump-0005", "pump-0006"],
            "first_ms": [t + 5_000, t - 20_000, t + 4_000, t + 90_000, t + 1_000],
            "top_sensor": ["current", "motor_current", "flow", "motor_current", "motor_current"],
        }
    )  # pump-0004: another role; pump-0005: too late; pump-0006: another line
    lines = {
        "pump-0001": "line-1",
        "pump-0002": "line-1",
        "pump-0003": "line-1",
        "pump-0004": "line-1",
        "pump-0005": "line-1",
        "pump-0006": "line-2",
    }
    agent = RootCauseAgent(min_machines=3)
    found = agent.shared_cause_with(mine, "motor_current", neighbours, lines)
    assert found is not None and found.kind == "shared_cause" and found.equipment_id == ""
    assert found.details["machines"] == ["pump-0001", "pump-0002", "pump-0003"]
    assert found.episode_id == f"shared:site-1:line-1:current:{t - 20_000}" and found.details["role"] == "current"
    # pump-0003 (the first to go) reporting the same event names it the same: one row in the insights table.
    theirs = Episode("pump-0003", "site-1", "pump", t - 20_000, mine.end_ms, W, frame, mine.verdicts, "line-1")
    others = pd.DataFrame(
        {
            "equipment_id": ["pump-0001", "pump-0002"],
            "first_ms": [t, t + 5_000],
            "top_sensor": ["motor_current", "motor_current"],
        }
    )
    assert agent.shared_cause_with(theirs, "motor_current", others, lines).episode_id == found.episode_id
    # Two machines are not a shared cause; an unknown lead sensor role is none either.
    assert agent.shared_cause_with(mine, "motor_current", neighbours.iloc[:1], lines) is None
    assert agent.shared_cause_with(mine, "", neighbours, lines) is None


# -- maintenance -----------------------------------------------------------------------------------------
def test_time_to_limit_extrapolates_quadratic_and_linear_trends() -> None:
    hours = np.arange(0, 5, 0.25)
    t_ms = (hours * 3_600_000).astype(np.int64)
    assert time_to_limit(t_ms, 0.5 * hours**2, 50.0) / 3_600_000 == pytest.approx(10 - hours[-1], rel=1e-6)
    assert time_to_limit(t_ms, 2.0 * hours, 20.0) / 3_600_000 == pytest.approx(10 - hours[-1], rel=1e-6)
    assert time_to_limit(t_ms, -hours, 5.0) is None
    assert time_to_limit(t_ms, hours, 1.0) == 0.0  # already past the limit


def test_maintenance_advises_from_the_knowledge_base_and_plans_by_due_time() -> None:
    n, start = 200, 60
    vib = noisy(n, 1.5, 1, sd=0.02)
    vib[start:] += 1.5 * ((np.arange(n - start)) / (n - start)) ** 2  # wear, accelerating
    wear = episode(stats({"vibration_rms": vib, "flow": noisy(n, 100, 2)}), start, n)
    context = AgentContext(
        [
            Insight(
                "diagnostic",
                "diagnosis",
                wear.equipment_id,
                "site-1",
                wear.episode_id,
                "Bearing wear",
                confidence=0.9,
                fault_type="bearing_wear",
            )
        ]
    )
    agent = MaintenanceAgent(Settings().scoring.rules_path)
    [advice] = agent.analyse([wear], context)
    assert advice.fault_type == "bearing_wear" and "bearing" in advice.details["actions"][-1].lower()
    ttf = advice.details["time_to_failure_h"]
    assert ttf is not None and 0 < ttf < 2  # 0.8 x 4.3 mm/s above baseline, reached soon after the episode
    assert 0 < advice.details["health_index"] < 100
    other = Insight(
        "maintenance",
        "maintenance",
        "fan-0001",
        "site-1",
        "x",
        "t",
        details={
            "due_ms": advice.details["due_ms"] - 1,
            "health_index": 90.0,
            "time_to_failure_h": None,
            "actions": ["look"],
            "line": "",
        },
    )
    plan = maintenance_plan([advice, other])
    assert list(plan["equipment_id"]) == ["fan-0001", "pump-0001"]


def test_a_broken_knowledge_base_is_refused_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "kb.yaml"
    bad.write_text("faults:\n  bearing_wear: {title: x, urgency_h: -1, actions: [a]}\n")
    with pytest.raises(ValueError, match="kb.yaml"):
        load_knowledge_base(bad)
    assert "bearing_wear" in load_knowledge_base().faults


# -- plug-ins --------------------------------------------------------------------------------------------
def test_the_example_compliance_agent_is_found_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    found, problems = agent_registry.discover()
    assert any(isinstance(a, ComplianceAgent) for a in found) and not problems
    broken = EntryPoint("broken", "agents.nowhere:Agent", agent_registry.ENTRY_POINT_GROUP)
    not_agent = EntryPoint("notagent", "agents.base:Insight", agent_registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(agent_registry, "entry_points", lambda group: [broken, not_agent])
    found, problems = agent_registry.discover()
    assert found == [] and len(problems) == 2 and "broken" in problems[0] and "not a subclass" in problems[1]
    # Only allow-listed plug-ins are imported at all: an installed package is not consent to run its code.
    found, problems = agent_registry.discover(settings=Settings(), allowed=["compliance"])
    assert found == [] and all("not in agents.plugin_allowlist" in p for p in problems) and len(problems) == 2


def test_compliance_reports_a_regulated_limit_breach() -> None:
    n, start = 30, 20
    winding = noisy(n, 100, 1)
    winding[start + 2 : start + 5] = 131.0
    e = episode(stats({"winding_temp": winding}), start, n, machine="motor-0001", etype="motor")
    [breach] = ComplianceAgent().analyse([e], AgentContext())
    assert breach.sensors == ("winding_temp",) and breach.details["seconds_over"] == 15.0
    assert breach.details["limit"] == 130.0


def test_one_failing_agent_does_not_stop_the_others() -> None:
    class Boom(RootCauseAgent):
        name = "boom"
        order = 5

        def analyse(self, episodes, context):  # noqa: ANN001, ANN202
            raise RuntimeError("boom")

    n, start = 30, 20
    e = episode(stats({"flow": noisy(n, 100, 1)}), start, n)
    out = agent_registry.run_agents([Boom(), DiagnosticAgent(None)], [e])
    assert [i.agent for i in out] == ["diagnostic"]


# -- evaluation metrics ----------------------------------------------------------------------------------
def test_macro_f1_by_hand() -> None:
    truth = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    f1, table = macro_f1(truth, pred)
    # a: P 1/2 R 1/2 F 1/2; b: P 2/3 R 1 F 0.8; c: P 0 R 0 F 0
    assert table.set_index("class")["f1"].round(6).to_dict() == {"a": 0.5, "b": 0.8, "c": 0.0}
    assert f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_root_cause_and_shared_cause_scores_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "episode_id": ["e1", "e2", "e3"],
            "label": ["bearing_wear", "sensor_drift", "no_fault"],
            "fault_sensors": [("vibration_rms", "bearing_temp"), ("flow",), ()],
        }
    )
    insights = [
        Insight("rc", "root_cause", "m", "s", "e1", "t", sensors=("bearing_temp", "flow")),
        Insight("rc", "root_cause", "m", "s", "e2", "t", sensors=("speed", "power", "flow")),
    ]
    assert root_cause_hits(frame, insights) == {"episodes": 2, "top1": 0.5, "top3": 1.0}
    shared = [
        Insight("rc", "shared_cause", "", "s", "e", "t", details={"machines": ["m1", "m2", "m9"]}),
        Insight("rc", "shared_cause", "", "s", "e", "t", details={"machines": ["m5", "m6"]}),
    ]
    events = [{"machines": ["m1", "m2", "m3"]}, {"machines": ["m7", "m8"]}]
    assert shared_cause_scores(shared, events) == {"insights": 2, "events": 2, "precision": 0.5, "recall": 0.5}


def test_failure_time_is_where_the_wear_curve_reaches_the_limit() -> None:
    span = 4.3  # pump vibration_rms: 0.2 .. 4.5 mm/s
    label = FaultLabel(
        "pump-0001",
        "site-1",
        "pump",
        ("vibration_rms",),
        "degradation",
        0,
        100_000,
        {"magnitudes": {"vibration_rms": 0.9 * span}, "exponent": 2.0},
    )
    assert failure_time_ms(label, 0.8) == int(np.sqrt(0.8 / 0.9) * 100_000)
    small = FaultLabel(
        "pump-0001",
        "site-1",
        "pump",
        ("vibration_rms",),
        "degradation",
        0,
        100_000,
        {"magnitudes": {"vibration_rms": 0.5 * span}, "exponent": 2.0},
    )
    assert failure_time_ms(small, 0.8) == 100_000
