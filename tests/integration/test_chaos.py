"""`vigil chaos` on the shared stack, under a live fleet: the broker and the ClickHouse sink are SIGKILLed and
restarted, the edge is cut off from the broker by a blackhole, ClickHouse refuses every insert, a gateway's clock
falls 30 s behind; every window and verdict the fleet produced lands exactly once (FINAL-free read, in true time)
and nothing is dead-lettered as late."""

from __future__ import annotations

import grpc
import pytest
import requests
from rich.console import Console

from edge.proto import telemetry_pb2_grpc
from operations.chaos import run_chaos
from operations.stack import fault_proxy
from operations.stack.services import Stack
from tests.conftest import edge_channel
from tests.integration.test_edge_service import consume_until, expected_samples, make_batch, samples_of

pytestmark = [pytest.mark.integration, pytest.mark.streams_live, pytest.mark.kills_services]


def test_crashes_a_blackhole_and_refused_writes_lose_and_duplicate_nothing(pipeline_stack: Stack) -> None:
    result = run_chaos(
        pipeline_stack.settings,
        machines=10,
        faults=[
            "kafka",
            "clickhouse-sink",
            "edge-kafka-blackhole:12",
            "clickhouse-refuses-writes:12",
            "gateway-clock-skew:15",
        ],
        console=Console(stderr=True),
        warmup_s=20.0,
        down_s=5.0,
        settle_s=10.0,
        recovery_timeout_s=180.0,
    )
    summary = result.as_dict()  # every figure of the run, in each failure message
    assert result.windows_expected > 500 and result.verdicts_expected > 50, summary
    by_name = {fault.service: fault for fault in result.faults}
    # Each fault bit: nothing that started during the blackhole or the refusal reached ClickHouse before it healed.
    assert by_name["edge-kafka-blackhole"].landed_during == 0, summary
    assert by_name["clickhouse-refuses-writes"].landed_during == 0, summary
    for fault in result.faults:
        assert fault.recovery_s is not None, f"{fault.service} did not recover: {summary}"
        counts = (fault.windows_lost, fault.windows_short, fault.windows_duplicated)
        assert counts == (0, 0, 0), f"{fault.service}: windows lost/short/duplicated {counts}: {summary}"
        assert (fault.verdicts_lost, fault.verdicts_duplicated) == (0, 0), summary
    assert not result.unattributed, summary
    assert not {r for r in result.dead_letters if r.startswith("late")}, summary
    # The skewed gateway's batches were corrected (uncorrected, 30 s old, they are dead-lettered as late and
    # their windows lost).
    settings = pipeline_stack.settings
    metrics = requests.get(f"http://{settings.edge.host}:{settings.edge.metrics_port}/metrics", timeout=5).text
    corrected = [line for line in metrics.splitlines() if line.startswith("vigil_edge_clock_corrected_batches_total")]
    assert corrected and float(corrected[0].split()[-1]) > 0, corrected


def test_a_resend_while_the_first_copy_is_on_its_way_to_kafka_is_written_once(pipeline_stack: Stack) -> None:
    """Kafka answers slowly (the proxy delays its responses 4 s), the gateway's deadline passes and it sends the
    batch again at once: the edge waits for the first copy's outcome instead of writing the batch a second time
    (a de-duplication mark set only when a client is still there to hear the acknowledgement wrote it twice)."""
    settings = pipeline_stack.settings
    channel = edge_channel(settings)
    client = telemetry_pb2_grpc.IngestionStub(channel)
    batch = make_batch("resend-001", sequence=7)
    fault_proxy.add_toxic(settings, "slow-kafka", "latency", {"latency": 4000}, "downstream", fault_proxy.EDGE_KAFKA)
    try:
        with pytest.raises(grpc.RpcError) as info:
            client.Ingest(batch, timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        again = client.Ingest(batch, timeout=30)
        assert (again.accepted_batches, again.duplicate_batches) == (0, 1)
    finally:
        fault_proxy.remove_toxic(settings, "slow-kafka", fault_proxy.EDGE_KAFKA)
    assert client.Ingest(make_batch("resend-001", sequence=8), timeout=30).accepted_batches == 1
    channel.close()
    # One key, one partition, in order: once sequence 8 is read, every copy of 7 was read too.
    records = consume_until(
        settings.kafka,
        settings.kafka.telemetry_topic,
        lambda values: any(r["equipment_id"] == "resend-001" and r["sequence"] == 8 for r in values),
    )
    ours = [r for r in records if r["equipment_id"] == "resend-001"]
    assert samples_of(ours, 7) == expected_samples(batch)  # one copy: each sample once
