"""Hot swap in the running scoring job: promote, refuse a mismatched model, promote again -- no restart.

A live stream of pumps runs through the whole pipeline while the model registry changes under the
job. Verdicts in ClickHouse must switch to each newly promoted model within the poll interval, keep
the previous model when a promoted one was trained on other sensors (the job's log saying why), and
keep coming one per window from the same job process throughout.
"""

from __future__ import annotations

import threading
import time
import uuid

import pandas as pd
import pytest

from connectors.clickhouse import make_client
from detectors.pca_t2q import PcaT2Q
from edge.gateway import GatewayClient
from edge.simulator.fleet import Fleet
from onnx_models.features import window_features
from onnx_models.registry import ModelRegistry
from operations.stack.services import Stack
from tests.integration.test_pipeline_e2e import expected_windows, poll, samples_frame

pytestmark = pytest.mark.integration

JOB = "anomaly-scoring-job"
MACHINES = 6


def train_pump_model(drop_sensor: str | None = None) -> tuple[bytes, dict]:
    """Fit PCA T2/Q on an offline run of a like fleet (normal data), shaped like `vigil train` output."""
    fleet = Fleet(MACHINES, sites=1, seed=42, fault_rate_per_machine_hour=0.0, equipment_types=["pump"])
    start = 1_790_000_000_000
    batches = [b for k in range(80) for b in fleet.tick(start + k * fleet.interval_ms)]
    stats = expected_windows(samples_frame(batches), 5000).rename(columns={"window_start_ms": "window_start"})
    if drop_sensor:
        stats = stats[stats.sensor != drop_sensor]
    x, names, _ = window_features(stats, history=5)
    model = PcaT2Q().fit(x, names)
    meta = {
        "feature_names": names,
        "threshold": 1.0,
        "threshold_method": "t2/q limits (test)",
        "history": 5,
        "window_size_ms": 5000,
        "sensors": sorted(stats.sensor.unique()),
    }
    return model.to_onnx(), meta


def test_promoted_models_swap_in_and_a_mismatched_one_is_refused(pipeline_stack: Stack) -> None:
    settings = pipeline_stack.settings
    registry = ModelRegistry(settings.models_dir)
    fleet = Fleet(MACHINES, sites=1, seed=41, fault_rate_per_machine_hour=0.0, equipment_types=["pump"])
    good, meta = train_pump_model()
    bad, bad_meta = train_pump_model(drop_sensor="flow")
    ids = sorted(m.equipment_id for m in fleet.machines)
    client = make_client(settings.clickhouse, "admin")
    pid = pipeline_stack.processes.pid(JOB)
    flink_logs = settings.logs_dir / "flink-anomaly-scoring"

    def job_log() -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(flink_logs.glob("*.log")))

    stop = threading.Event()
    errors: list[str] = []

    def stream() -> None:  # a live fleet: one batch per machine every interval, at wall-clock time
        size = fleet.interval_ms
        with GatewayClient(settings, gateway_id=f"swap-{uuid.uuid4().hex[:6]}") as gateway:
            end = (int(time.time() * 1000) // size) * size
            while not stop.is_set():
                ack = gateway.send(fleet.tick(end))
                if ack is None or ack.accepted_batches != MACHINES:
                    errors.append(f"tick {end}: {ack}")
                end += size
                stop.wait(max(0.0, end / 1000 - time.time()))

    def versions_since(since_ms: int) -> pd.DataFrame:
        return client.query_df(
            "SELECT model_versions, count() AS n, min(toUnixTimestamp64Milli(window_start)) AS first "
            "FROM anomalies_latest WHERE kind = 'window' AND equipment_id IN {ids:Array(String)} "
            "AND window_start >= fromUnixTimestamp64Milli({a:Int64}) GROUP BY model_versions",
            parameters={"ids": ids, "a": since_ms},
        )

    def only(version: str, since_ms: int):
        frame = versions_since(since_ms)
        return frame if len(frame) == 1 and frame.model_versions.iloc[0] == version and frame.n.iloc[0] >= 4 else None

    # Windows judged after a promotion + one poll may still be in flight: look from a margin after it.
    margin_ms = int((settings.scoring.model_poll_s + 3 * settings.window.size_ms / 1000) * 1000)
    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        registry.register("pump", "pca_t2q", good, meta, promote=True)
        v1_at = int(time.time() * 1000)
        poll(lambda: only("pca_t2q=v0001", v1_at + margin_ms), 90, "verdicts scored by v0001")

        registry.register("pump", "pca_t2q", bad, bad_meta, promote=True)  # v0002 lacks the flow sensor
        v2_at = int(time.time() * 1000)
        poll(lambda: "v0002 refused" in job_log() or None, 60, "the job refusing v0002")
        kept = poll(lambda: only("pca_t2q=v0001", v2_at + margin_ms), 60, "v0001 still scoring")
        assert kept.n.iloc[0] >= 4

        registry.register("pump", "pca_t2q", good, meta, promote=True)  # v0003: same model, new version
        v3_at = int(time.time() * 1000)
        poll(lambda: only("pca_t2q=v0003", v3_at + margin_ms), 90, "verdicts scored by v0003")
    finally:
        stop.set()
        streamer.join(30)
    assert not errors, errors[:3]
    assert pipeline_stack.processes.pid(JOB) == pid, "the job was not restarted"
    text = job_log()
    assert "feature mismatch" in text and "keeping v0001" in text
    # One verdict per machine and window all along: no window lost or doubled across the swaps.
    counts = client.query_df(
        "SELECT equipment_id, count() AS n, uniqExact(window_start) AS windows FROM anomalies_latest "
        "WHERE kind = 'window' AND equipment_id IN {ids:Array(String)} "
        "AND window_start >= fromUnixTimestamp64Milli({a:Int64}) "
        "AND window_start < fromUnixTimestamp64Milli({b:Int64}) GROUP BY equipment_id",
        parameters={"ids": ids, "a": v1_at, "b": v3_at},
    )
    assert len(counts) == MACHINES and (counts.n == counts.windows).all()
    span = (v3_at - v1_at) // settings.window.size_ms
    assert (counts.windows >= span - 1).all(), counts
