"""`vigil bench latency`'s arithmetic: attribution of messages to faults, stages, duplicates, percentiles."""

from __future__ import annotations

from operations.bench.latency import (
    FaultTiming,
    KillTiming,
    _attribute_kills,
    _duplicates,
    _first_arrivals,
    _pct,
    stage_breakdown,
)


def message(channel: str, at_ms: int, machines: list[str], text: str = "CRITICAL: x", to: str = "+1") -> dict:
    return {
        "channel": channel,
        "to": to,
        "text": text,
        "body": text,
        "machines": machines,
        "firing": not text.startswith("RESOLVED"),
        "at_ms": at_ms,
    }


def test_first_firing_message_after_the_fault_counts_for_every_machine_it_names() -> None:
    a, b = FaultTiming("pump-0001", "site-1", 10_000), FaultTiming("fan-0002", "site-1", 12_000)
    _first_arrivals(
        [
            message("slack", 9_000, ["pump-0001"]),  # before the fault: an earlier episode, not this one
            message("slack", 18_000, ["pump-0001", "fan-0002"]),  # one grouped message tells of both
            message("slack", 19_000, ["pump-0001"]),
            message("sms", 17_500, ["pump-0001"], text="RESOLVED: old"),  # resolved messages never count
            message("sms", 20_000, ["pump-0001"]),
        ],
        [a, b],
    )
    assert (a.slack_ms, a.sms_ms, b.slack_ms, b.sms_ms) == (18_000, 20_000, 18_000, None)
    assert (a.latency_s("slack"), a.latency_s("sms"), b.latency_s("slack"), b.latency_s("sms")) == (
        8.0,
        10.0,
        6.0,
        None,
    )


def test_stages_add_up_to_the_slack_latency_and_skip_incomplete_faults() -> None:
    full = FaultTiming("pump-0001", "s", 1_000, window_end_ms=5_000, emitted_ms=8_000, relay_ms=9_500, slack_ms=9_520)
    partial = FaultTiming("pump-0002", "s", 1_000, window_end_ms=5_000, emitted_ms=None, slack_ms=9_000)
    stages = stage_breakdown([full, partial])
    assert [values for values in stages.values()] == [[4.0], [3.0], [1.5], [0.02]]
    assert sum(v[0] for v in stages.values()) == full.latency_s("slack")


def test_duplicates_are_extra_copies_of_one_body_to_one_destination() -> None:
    messages = [
        message("sms", 1, ["m"], "CRITICAL: a", "+1"),
        message("sms", 2, ["m"], "CRITICAL: a", "+1"),
        message("sms", 3, ["m"], "CRITICAL: a", "+1"),
        message("sms", 4, ["m"], "CRITICAL: a", "+2"),
        message("slack", 5, ["m"], "CRITICAL: a"),
        message("slack", 6, ["m"], "CRITICAL: b"),
    ]
    assert _duplicates(messages) == {"sms": 2, "slack": 0}


def test_percentiles_interpolate_like_numpy_and_say_when_nothing_was_measured() -> None:
    assert _pct([]) == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    stats = _pct([float(v) for v in range(1, 11)])  # 1..10
    assert (stats["p50"], stats["p95"], stats["p99"], stats["max"], stats["n"]) == (5.5, 9.55, 9.91, 10.0, 10)


def test_faults_around_a_crash_belong_to_it_and_unpaged_ones_count_as_lost() -> None:
    crash = KillTiming("notify-relay", killed_ms=100_000, restarted_ms=110_000)
    timings = [
        FaultTiming("pump-0001", "s", 80_000, slack_ms=85_000, sms_ms=86_000),  # before: not the crash's
        FaultTiming("pump-0002", "s", 95_000, slack_ms=112_000, sms_ms=None),  # 5 s before the kill: SMS lost
        FaultTiming("pump-0003", "s", 139_000, slack_ms=None, sms_ms=None),  # within 30 s of the restart
        FaultTiming("pump-0004", "s", 141_000, slack_ms=None, sms_ms=None),  # later: someone else's problem
    ]
    _attribute_kills([crash], timings)
    assert (crash.faults, crash.slack_lost, crash.sms_lost, crash.slack_max_s) == (2, 1, 2, 17.0)
