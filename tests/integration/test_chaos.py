"""`vigil chaos` on the shared stack: the broker and the ClickHouse sink are SIGKILLed under a live fleet and
restarted; every window and verdict the fleet produced lands exactly once (FINAL-free read)."""

from __future__ import annotations

import pytest
from rich.console import Console

from operations.chaos import run_chaos
from operations.stack.services import Stack

pytestmark = [pytest.mark.integration, pytest.mark.streams_live, pytest.mark.kills_services]


def test_killing_the_broker_and_a_sink_loses_and_duplicates_nothing(pipeline_stack: Stack) -> None:
    result = run_chaos(
        pipeline_stack.settings,
        machines=10,
        faults=["kafka", "clickhouse-sink"],
        console=Console(stderr=True),
        warmup_s=20.0,
        down_s=5.0,
        settle_s=10.0,
        recovery_timeout_s=180.0,
    )
    assert result.windows_expected > 500 and result.verdicts_expected > 50
    for fault in result.faults:
        assert fault.recovery_s is not None, f"{fault.service} did not recover"
        counts = (fault.windows_lost, fault.windows_short, fault.windows_duplicated)
        assert counts == (0, 0, 0), f"{fault.service}: windows lost/short/duplicated {counts}"
        assert (fault.verdicts_lost, fault.verdicts_duplicated) == (0, 0), fault
    assert not result.unattributed, result.unattributed
    assert not {r for r in result.dead_letters if r.startswith("late")}, result.dead_letters
