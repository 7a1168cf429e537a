"""Fleet progress: the oldest promise among machines heard from recently, and the marker it becomes."""

from __future__ import annotations

import orjson

from edge.progress import FleetProgress, marker_value
from vigil.contracts import MARKER_GATEWAY


def test_progress_is_the_oldest_promise_of_active_machines() -> None:
    progress = FleetProgress(active_ms=10_000)
    assert progress.low_watermark(now_ms=0) is None
    progress.update("a", 5_000, now_ms=0)
    progress.update("b", 4_000, now_ms=10_000)
    assert progress.low_watermark(now_ms=10_000) == 4_000
    progress.update("b", 3_000, now_ms=10_000)  # an older re-send never moves a promise back
    assert progress.low_watermark(now_ms=10_000) == 4_000
    progress.update("a", 15_000, now_ms=10_000)
    progress.update("b", 9_000, now_ms=10_000)
    assert progress.low_watermark(now_ms=10_000) == 9_000


def test_a_silent_machine_stops_holding_the_fleet_back() -> None:
    progress = FleetProgress(active_ms=10_000)
    progress.update("dead", 1_000, now_ms=1_000)
    progress.update("alive", 20_000, now_ms=11_000)
    assert progress.low_watermark(now_ms=11_000) == 1_000  # 10 s since heard from: still active (and warm)
    assert progress.low_watermark(now_ms=11_001) == 20_000
    progress.update("dead", 2_000, now_ms=12_000)  # back again: holds the fleet back again
    assert progress.low_watermark(now_ms=12_000) == 2_000


def test_marker_watermark_is_the_progress_after_the_lateness_the_source_subtracts() -> None:
    marker = orjson.loads(marker_value(progress_ms=10_000, lateness_ms=3_000, now_ms=99))
    assert marker["event_time_ms"] - 3_000 == 10_000 == marker["chunk_start_ms"] - 3_000
    assert (marker["equipment_id"], marker["gateway_id"], marker["sensors"]) == ("", MARKER_GATEWAY, [])


def test_no_progress_before_every_machine_had_time_to_report() -> None:
    progress = FleetProgress(active_ms=10_000)
    progress.update("a", 5_000, now_ms=1_000)
    assert progress.low_watermark(now_ms=10_999) is None  # another machine may not have reported yet
    progress.update("a", 12_000, now_ms=11_000)
    assert progress.low_watermark(now_ms=11_000) == 12_000
    # After a fleet-wide silence (everyone pruned) their last promise stands; the first machine back waits again.
    assert progress.low_watermark(now_ms=30_000) == 12_000
    progress.update("a", 40_000, now_ms=40_000)
    assert progress.low_watermark(now_ms=40_000) is None


def test_a_burst_then_silence_still_closes_its_windows() -> None:
    """A fresh edge gets one burst (a drained buffer) and then nothing: the warm-up ends exactly as the burst's
    machines fall silent, and their promise must still become the progress (or their windows never close)."""
    progress = FleetProgress(active_ms=10_000)
    progress.update("a", 7_000, now_ms=1_000)
    progress.update("b", 9_000, now_ms=1_000)
    assert progress.low_watermark(now_ms=5_000) is None  # warming up
    assert progress.low_watermark(now_ms=11_001) == 9_000  # both silent since: the newest promise
    progress.update("c", 3_000, now_ms=20_000)  # a late-comer starts a new warm-up, then holds nothing back
    assert progress.low_watermark(now_ms=20_000) is None


def test_machines_still_trying_through_a_broker_outage_hold_their_last_acknowledged_promise() -> None:
    """Nothing is acknowledged while the broker is down; gateways keep trying. Releasing them after
    ``active_ms`` would move the watermark to the newest promise and make the laggards' replay late."""
    progress = FleetProgress(active_ms=10_000)
    progress.update("ahead", 10_000, now_ms=0)
    progress.update("behind", 5_000, now_ms=0)
    assert progress.low_watermark(now_ms=10_000) == 5_000
    for now in range(10_000, 40_000, 5_000):  # each tick a new attempt, which fails after a while
        for eid in ("ahead", "behind"):
            progress.attempt_started(eid, now)
        assert progress.low_watermark(now_ms=now + 4_000) == 5_000
        for eid in ("ahead", "behind"):
            progress.attempt_ended(eid, now + 4_000)
    progress.attempt_started("behind", 40_000)  # one request in flight longer than active_ms still holds
    assert progress.low_watermark(now_ms=60_000) == 5_000
    progress.acknowledged("behind", 30_000, 60_000)
    progress.attempt_ended("behind", 60_000)
    assert progress.low_watermark(now_ms=60_000) == 30_000  # "ahead" fell silent at 34 s: released


def test_a_machine_heard_but_never_acknowledged_holds_every_marker() -> None:
    progress = FleetProgress(active_ms=10_000)
    progress.update("a", 5_000, now_ms=0)
    progress.update("a", 12_000, now_ms=10_000)
    assert progress.low_watermark(now_ms=10_000) == 12_000
    progress.attempt_started("new", 11_000)
    assert progress.low_watermark(now_ms=11_000) is None  # its data may be for any window
    progress.acknowledged("new", 9_000, 11_050)
    progress.attempt_ended("new", 11_050)
    assert progress.low_watermark(now_ms=11_050) == 9_000


def test_machines_restored_after_a_restart_hold_the_fleet_until_they_are_back_or_their_grace_ends() -> None:
    before = FleetProgress(active_ms=10_000)
    before.update("gone", 500, now_ms=0)
    before.update("slow", 1_000, now_ms=20_000)
    before.update("fast", 8_000, now_ms=20_000)
    assert before.low_watermark(now_ms=20_000) == 1_000  # "gone" was silent for 20 s: released
    promises = before.promises()
    assert promises == {"slow": 1_000, "fast": 8_000}

    after = FleetProgress(active_ms=10_000)  # the restarted edge: restart at 100 s, grace 60 s
    after.restore(promises, until_ms=160_000)
    after.update("fast", 200_000, now_ms=100_000)
    assert after.low_watermark(now_ms=110_001) == 1_000  # warm, and "slow" (not heard from yet) holds it
    after.update("fast", 200_000, now_ms=150_000)
    assert after.low_watermark(now_ms=150_000) == 1_000
    after.update("slow", 2_000, now_ms=155_000)  # back, replaying: it holds the fleet at what it delivered
    assert after.low_watermark(now_ms=155_000) == 2_000
    assert after.promises() == {"slow": 2_000, "fast": 200_000}


def test_a_restored_machine_that_never_comes_back_is_released_when_its_grace_ends() -> None:
    progress = FleetProgress(active_ms=10_000)
    progress.restore({"never": 1_000}, until_ms=60_000)
    progress.update("fast", 70_000, now_ms=30_000)
    progress.update("fast", 70_000, now_ms=55_000)
    assert progress.low_watermark(now_ms=60_000) == 1_000
    assert progress.low_watermark(now_ms=60_001) == 70_000
