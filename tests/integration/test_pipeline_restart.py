"""Exactly-once through a hard crash: SIGKILL a Flink job mid-stream, restart it, lose and double nothing.

Each job in turn (window statistics, anomaly scoring) is killed after a checkpoint completed and while
windows are open; batches keep arriving while it is down. After the restart (from the newest retained
checkpoint) every window must be in ClickHouse exactly once, with statistics equal to numpy over the
samples sent (a window restored from state and then fed replayed records twice would show a doubled
count, a lost window would be missing), and every (machine, window) must have exactly one verdict.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import numpy as np
import pytest

from connectors.clickhouse import make_client
from edge.gateway import GatewayClient
from edge.simulator.fleet import Fleet
from jobs.flink_env import latest_checkpoint
from operations.stack.services import Stack
from tests.integration.test_pipeline_e2e import expected_windows, poll, samples_frame

pytestmark = pytest.mark.integration

_last_tick: dict[str, int] = {}
JOBS = {"window-stats-job": "vigil-window-stats", "anomaly-scoring-job": "vigil-anomaly-scoring"}


@pytest.mark.parametrize("job", list(JOBS))
def test_sigkill_and_restart_keeps_every_window_exactly_once(pipeline_stack: Stack, job: str) -> None:
    settings = pipeline_stack.settings
    job_checkpoints = settings.checkpoints_dir / JOBS[job]
    size = settings.window.size_ms
    fleet = Fleet(8, sites=1, seed=23, fault_rate_per_machine_hour=0.0)  # data in every partition
    interval = fleet.interval_ms
    # Newer than anything other tests sent (so nothing is late), within the edge's future-skew limit.
    # The fleet numbers batches by tick time: start after the previous run's last tick (no duplicate
    # batches), but no further ahead than the edge's future-skew limit allows for the whole run.
    wait_s = (_last_tick.get("end", 0) + interval) / 1000 - (time.time() + interval / 1000)
    if wait_s > 0:
        time.sleep(wait_s)
    first_end = max((int(time.time() * 1000) // size) * size + interval, _last_tick.get("end", 0) + interval)
    ticks = [first_end + k * interval for k in range(10)]
    _last_tick["end"] = ticks[-1]
    before, while_down, flush = ticks[:4], ticks[4:8], ticks[8:]
    sent = []
    client = make_client(settings.clickhouse, "admin")
    ids = sorted(m.equipment_id for m in fleet.machines)

    ahead_ms = int(settings.edge.max_future_skew_s * 1000)

    def send(ends: list[int]) -> None:
        for end in ends:
            # As a gateway does: a tick once its time has come (the edge refuses data further ahead than its limit).
            if (early_s := (end - ahead_ms) / 1000 - time.time()) > 0:
                time.sleep(early_s)
            batches = fleet.tick(end)
            ack = gateway.send(batches)
            assert ack is not None and ack.accepted_batches == len(batches)
            sent.extend(batches)

    def rows_since(start_ms: int) -> int:
        return int(
            client.command(
                "SELECT count() FROM window_stats FINAL WHERE equipment_id IN {ids:Array(String)} "
                "AND window_start >= fromUnixTimestamp64Milli({a:Int64})",
                parameters={"ids": ids, "a": start_ms},
            )
        )

    with GatewayClient(settings, gateway_id=f"restart-{uuid.uuid4().hex[:6]}") as gateway:
        send(before)
        poll(lambda: rows_since(first_end - interval) > 0 or None, 60, "first windows before the crash")
        crash_after = time.time()
        poll(
            lambda: (c := latest_checkpoint(job_checkpoints)) is not None and c.stat().st_mtime > crash_after or None,
            60,
            "a checkpoint completed after those windows",
        )

        pid = pipeline_stack.processes.pid(job)
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)  # no flush, no savepoint: a crash
        poll(lambda: pipeline_stack.processes.pid(job) is None or None, 30, "the killed job to be gone")

        send(while_down)  # Kafka keeps them while the job is down
        log = pipeline_stack.processes.log_path(job)
        resumed_before = log.read_text(errors="replace").count("resuming from checkpoint")
        pipeline_stack.up((job,))
        send(flush)
    assert log.read_text(errors="replace").count("resuming from checkpoint") == resumed_before + 1

    samples = samples_frame(sent)
    expected = expected_windows(samples, size)
    first_full = first_end - interval + size
    last_data_end = while_down[-1]
    expected = expected[(expected.window_start_ms >= first_full) & (expected.window_start_ms + size <= last_data_end)]
    query = (
        "SELECT equipment_id, sensor, toUnixTimestamp64Milli(window_start) AS window_start_ms, count, avg, stddev, "
        "min, max FROM window_stats FINAL WHERE equipment_id IN {ids:Array(String)} "
        "AND window_start >= fromUnixTimestamp64Milli({a:Int64}) AND window_end <= fromUnixTimestamp64Milli({b:Int64})"
    )
    params = {"ids": ids, "a": first_full, "b": last_data_end}

    def complete():
        frame = client.query_df(query, parameters=params)
        return frame if len(frame) >= len(expected) else None

    got = poll(complete, 180, f"{len(expected)} windows after the restart")
    assert len(got) == len(expected), "no window twice"
    merged = expected.merge(got, on=["equipment_id", "sensor", "window_start_ms"], suffixes=("", "_ch"))
    assert len(merged) == len(expected), "no window missing"
    assert (merged["count"] == merged["count_ch"]).all(), "no sample counted twice or lost"
    for stat in ("avg", "stddev", "min", "max"):
        np.testing.assert_allclose(merged[f"{stat}_ch"], merged[stat], rtol=1e-9, atol=1e-9, err_msg=stat)

    # Exactly one verdict per (machine, window): none lost across the crash, none doubled in the store.
    want = set(expected[["equipment_id", "window_start_ms"]].drop_duplicates().itertuples(index=False, name=None))
    verdict_query = (
        "SELECT equipment_id, toUnixTimestamp64Milli(window_start) AS window_start_ms, count() AS n "
        "FROM anomalies_latest WHERE kind = 'window' AND equipment_id IN {ids:Array(String)} "
        "AND window_start >= fromUnixTimestamp64Milli({a:Int64}) AND window_end <= fromUnixTimestamp64Milli({b:Int64}) "
        "GROUP BY equipment_id, window_start"
    )

    def verdicts():
        frame = client.query_df(verdict_query, parameters=params)
        return frame if len(frame) >= len(want) else None

    got_verdicts = poll(verdicts, 180, f"{len(want)} verdicts after the restart")
    assert set(got_verdicts[["equipment_id", "window_start_ms"]].itertuples(index=False, name=None)) == want
    assert (got_verdicts["n"] == 1).all()
