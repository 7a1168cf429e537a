"""The diagnostic classifier trained from ClickHouse history and labels (`vigil labels import`, `vigil train
--agents --source clickhouse`): a simulated plant fleet's window statistics, verdicts and fault labels go
into a real ClickHouse server; the episodes and labels read back must be the ones the in-memory pipeline
builds from the same run, and the model registered from them must load in the diagnostic agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from agents.base import AgentContext
from agents.diagnostic import MODEL_NAME, REGISTRY_TYPE, DiagnosticAgent
from agents.episodes import build_episodes
from agents.features import episode_matrix
from connectors.clickhouse import apply_schema, make_client, struct_to_map
from detectors import score_names
from onnx_models.registry import ModelRegistry
from operations.cli import app
from operations.evaluate.labelled_episodes import label_episodes
from operations.evaluate.sim import SimEvaluation, SimOptions, evaluate_sim
from operations.training.agents import clickhouse_labelled_episodes
from tests.conftest import clickhouse_server
from vigil.settings import ClickHouseSettings, Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSettings]:
    with clickhouse_server(tmp_path_factory, "agent_training_test") as server:
        yield server


@pytest.fixture(scope="module")
def run() -> SimEvaluation:
    """16 machines x 30 min of the plant fault mix, scored by the job's own scorer (a few seconds)."""
    return evaluate_sim(
        Settings(), SimOptions(machines=16, duration_s=1800, seed=11, fault_rate=4.0, fault_mix="plant")
    )


def _ms(values: pd.Series) -> np.ndarray:
    return values.to_numpy(np.int64).astype("datetime64[ms]")


def load_history(settings: Settings, result: SimEvaluation, shift_ms: int) -> None:
    """The run's window statistics and verdicts as the sinks would have written them, moved to recent times
    (the tables' TTL drops data older than window_ttl_days)."""
    run = result.run
    assert run is not None
    client = make_client(settings.clickhouse, "admin")
    apply_schema(client, settings.clickhouse)
    stats = run.stats
    start = _ms(stats["window_start_ms"] + shift_ms)
    client.insert_arrow(
        "window_stats",
        pa.table(
            {
                "equipment_id": stats["equipment_id"].to_numpy(str),
                "site": stats["site"].to_numpy(str),
                "equipment_type": stats["equipment_type"].to_numpy(str),
                "sensor": stats["sensor"].to_numpy(str),
                "unit": np.full(len(stats), "u"),
                "window_start": start,
                "window_end": start + np.timedelta64(5000, "ms"),
                "count": stats["count"].to_numpy(np.uint32),
                "avg": stats["avg"].to_numpy(float),
                "stddev": stats["stddev"].to_numpy(float),
                "min": stats["min"].to_numpy(float),
                "max": stats["max"].to_numpy(float),
                "emitted_at": start + np.timedelta64(6500, "ms"),
            }
        ),
    )
    v = result.verdicts.loc[result.verdicts["emit"].to_numpy(bool)].merge(run.machines, on="equipment_id")
    vstart = _ms(v["window_start_ms"] + shift_ms)

    def strings(column: str) -> pa.Array:
        return pa.array([list(x) for x in v[column]], type=pa.list_(pa.string()))

    names = [n for n in score_names() if n in v.columns]
    client.insert_arrow(
        settings.clickhouse.anomalies_table,
        pa.table(
            {
                "equipment_id": v["equipment_id"].to_numpy(str),
                "site": v["site"].to_numpy(str),
                "equipment_type": v["equipment_type"].to_numpy(str),
                "window_start": vstart,
                "window_end": vstart + np.timedelta64(5000, "ms"),
                "kind": v["kind"].to_numpy(str),
                "is_anomaly": v["is_anomaly"].to_numpy(np.uint8),
                "severity": v["severity"].to_numpy(str),
                "score": v["score"].to_numpy(float),
                "scores": struct_to_map(
                    pa.StructArray.from_arrays(
                        [pa.array(v[n].to_numpy(float), from_pandas=True) for n in names], names=list(names)
                    )
                ),
                "detectors": strings("detectors"),
                "rule_hits": strings("rule_hits"),
                "top_sensors": strings("top_sensors"),
                "dead_sensors": strings("dead_sensors"),
                "model_versions": np.full(len(v), "sim"),
                "summary": np.full(len(v), ""),
                "last_seen": vstart,
                "emitted_at": vstart + np.timedelta64(7500, "ms"),
            }
        ),
    )
    client.close()


def test_episodes_and_labels_read_from_clickhouse_match_the_in_memory_pipeline_and_train_a_model(
    ch: ClickHouseSettings, run: SimEvaluation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, clickhouse=ch)
    sim = run.run
    assert sim is not None
    now_ms = (pd.Timestamp.now(tz="UTC").value // 1_000_000) // 5000 * 5000
    shift = now_ms - sim.end_ms - 3_600_000  # the run ends an hour ago
    load_history(settings, run, shift)
    ground_truth = tmp_path / "ground_truth.jsonl"
    ground_truth.write_bytes(
        b"".join(
            orjson.dumps({**lb.to_dict(), "start_ms": lb.start_ms + shift, "end_ms": lb.end_ms + shift}) + b"\n"
            for lb in sim.labels
        )
    )
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    from vigil.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        imported = runner.invoke(app, ["labels", "import", str(ground_truth)], env={"COLUMNS": "200"})
        assert imported.exit_code == 0, imported.output
        assert f"{len(sim.labels)} fault labels" in imported.output
        again = runner.invoke(app, ["labels", "import", str(ground_truth)])  # replaces, never doubles
        assert again.exit_code == 0, again.output

        client = make_client(ch, "admin")
        data = clickhouse_labelled_episodes(settings, client, sim.start_ms + shift, sim.end_ms + shift)
        client.close()

        # The same run through the in-memory path the offline evaluation uses.
        verdicts = run.verdicts.loc[run.verdicts["emit"].to_numpy(bool)]
        expected = build_episodes(
            verdicts,
            sim.stats,
            sim.window_ms,
            gap_windows=settings.agents.gap_windows,
            machines=sim.machines,
            now_ms=sim.end_ms,
        )
        expected = [e for e in expected if e.closed]
        grace = settings.scoring.history_windows * sim.window_ms
        labelled = label_episodes(expected, sim.labels, grace)
        assert len(data.episodes) == len(expected) > 5
        assert [(e.equipment_id, e.start_ms - shift, e.end_ms - shift) for e in data.episodes] == [
            (e.equipment_id, e.start_ms, e.end_ms) for e in expected
        ]
        assert list(data.frame["label"]) == list(labelled["label"])
        assert len(set(data.frame["label"])) >= 3  # faults of several kinds, and false alarms
        np.testing.assert_allclose(episode_matrix(data.episodes), episode_matrix(expected), rtol=1e-9, atol=1e-9)

        trained = runner.invoke(
            app, ["train", "--agents", "--source", "clickhouse", "--hours", "3", "--promote"], env={"COLUMNS": "200"}
        )
        assert trained.exit_code == 0, trained.output
        registry = ModelRegistry.from_settings(settings)
        agent = DiagnosticAgent(registry)
        assert agent.model_version is not None
        version = registry.live(REGISTRY_TYPE, MODEL_NAME)
        assert version is not None
        training = version.metadata["training"]
        assert training["source"] == "clickhouse" and training["labels"] == len(sim.labels)
        # --hours 3 reaches past the run's end: the episodes still open there are closed by now and count too.
        assert training["episodes"] >= len(expected)
        assert 0 < version.metadata["metrics"]["episodes"] <= training["episodes"]  # rule-decided ones left out
        diagnoses = agent.analyse(data.episodes[:3], AgentContext())
        assert len(diagnoses) == 3 and all(d.fault_type for d in diagnoses)
    finally:
        get_settings.cache_clear()
