"""Verdict batches -> Alertmanager alert changes (alerting.policy.AlertMapper), no I/O."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from alerting.policy import ALERT_ANOMALY, SOURCE, AlertMapper
from connectors.alertmanager import parse_matcher, rfc3339
from vigil.settings import Settings

T0 = 1_700_000_000_000  # window start (ms) of the first window of every test
W = 5000


def verdict(
    eid: str = "m1",
    n: int = 0,
    severity: str = "normal",
    *,
    detectors: tuple[str, ...] = (),
    hits: tuple[str, ...] = (),
    top: tuple[str, ...] = (),
    dead: tuple[str, ...] = (),
    kind: str = "window",
    site: str = "north",
    score: float = 0.4,
    emitted: int = 0,
) -> bytes:
    """The JSON value of one verdict of window number ``n`` (as the scoring job writes it: ``detectors`` lists
    the models given, then the rules of the hits, then dead_sensor)."""
    start = T0 + n * W
    rules = tuple(dict.fromkeys(h.rpartition(":")[2] for h in hits))
    detectors = (*detectors, *(r for r in rules if r not in detectors), *(("dead_sensor",) if dead else ()))
    return orjson.dumps(
        {
            "equipment_id": eid,
            "site": site,
            "equipment_type": "pump",
            "window_start_ms": start,
            "window_end_ms": start + W,
            "kind": kind,
            "is_anomaly": severity != "normal",
            "severity": severity,
            "score": score,
            "scores": {"isolation_forest": score, "rules": 0.1},
            "detectors": list(detectors),
            "rule_hits": list(hits),
            "top_sensors": list(top),
            "dead_sensors": list(dead),
            "model_versions": "isolation_forest=v0003" if "isolation_forest" in detectors else "",
            "summary": f"{severity}: {', '.join(detectors)}",
            "last_seen_ms": start + W if kind == "window" else start - W,
            "emitted_at_ms": start + W + 500 + emitted,
        }
    )


def now_after(n: int) -> float:
    """Wall clock (s) shortly after window ``n`` closed."""
    return (T0 + (n + 1) * W + 2000) / 1000.0


def key(alert: dict[str, Any]) -> tuple[str, str, str, str]:
    labels = alert["labels"]
    return labels["alertname"], labels["detector"], labels["sensor"], labels["severity"]


def resolved(alert: dict[str, Any], now: float) -> bool:
    return alert["endsAt"] == rfc3339(now)


@pytest.fixture
def mapper() -> AlertMapper:
    """Pages on the first anomalous window (persistence has its own test), resolves after 2 clear windows."""
    return AlertMapper(
        Settings(
            alerting={
                "resolve_after_clear_windows": 2,
                "page_after_windows": 1,
                "page_within_windows": 1,
                "page_min_score": 0.0,
                "alert_ttl_s": 300,
                "console_url": "http://console:8501/",
            }
        )
    )


def test_one_incident_per_machine_with_labels_and_annotations(mapper: AlertMapper) -> None:
    now = now_after(0)
    alerts = mapper.apply(
        [
            verdict(
                "m1",
                0,
                "critical",
                detectors=("isolation_forest",),
                hits=("bearing_temp:threshold_max",),
                top=("bearing_temp", "vibration"),
                dead=("flow",),
                score=1.84,
            ),
            verdict("m2", 0, "normal"),
        ],
        now,
    )
    # Three kinds of evidence, one page: labelled with the hard evidence (the broken limit).
    assert [key(a) for a in alerts] == [(ALERT_ANOMALY, "threshold_max", "bearing_temp", "critical")]
    alert = alerts[0]
    assert alert["labels"] == {
        "alertname": ALERT_ANOMALY,
        "severity": "critical",
        "site": "north",
        "equipment_id": "m1",
        "equipment_type": "pump",
        "sensor": "bearing_temp",
        "detector": "threshold_max",
        "source": SOURCE,
    }
    assert alert["startsAt"] == rfc3339(T0 / 1000)  # start of the window that opened the incident
    assert alert["endsAt"] == rfc3339(now + 300)  # alert_ttl_s ahead: expires unless re-posted
    assert alert["generatorURL"] == "http://console:8501/?equipment=m1"
    notes = alert["annotations"]
    assert notes["console_url"] == "http://console:8501/?equipment=m1"
    assert notes["summary"] == "critical: isolation_forest, threshold_max, dead_sensor"
    assert (notes["window_start"], notes["window_end"]) == (rfc3339(T0 / 1000), rfc3339((T0 + W) / 1000))
    for part in (
        "Score 1.84",
        "alarm at 1.0, critical at 2.0",
        "Top sensors: bearing_temp, vibration",
        "Rule hits: bearing_temp:threshold_max",
        "Models: isolation_forest=v0003",
    ):
        assert part in notes["description"]
    assert mapper.counters.alerts_firing == 1
    assert mapper.counters.verdicts_consumed == 2


def test_normal_verdicts_fire_nothing(mapper: AlertMapper) -> None:
    assert mapper.apply([verdict(f"m{i}", 0) for i in range(50)], now_after(0)) == []
    assert mapper.active.empty


def test_the_incident_keeps_its_labels_while_its_evidence_changes(mapper: AlertMapper) -> None:
    first = mapper.apply([verdict("m1", 0, "warning", detectors=("pca_t2q",), top=("temp", "vib"))], now_after(0))
    assert [key(a) for a in first] == [(ALERT_ANOMALY, "pca_t2q", "temp", "warning")]
    # The ranking moves, another detector and a rule join: the same incident, nothing new to post.
    moved = mapper.apply(
        [verdict("m1", 1, "warning", detectors=("isolation_forest",), hits=("vib:zscore",), top=("vib",))],
        now_after(1),
    )
    assert moved == []
    firing = mapper.firing_alerts(now_after(1))
    assert [key(a) for a in firing] == [(ALERT_ANOMALY, "pca_t2q", "temp", "warning")]
    assert "vib:zscore" in firing[0]["annotations"]["description"]  # the evidence is updated, not re-paged
    # The incident ends; a new one takes the evidence of its own first window.
    mapper.apply([verdict("m1", 2)], now_after(2))
    ended = mapper.apply([verdict("m1", 3)], now_after(3))
    assert [(key(a), resolved(a, now_after(3))) for a in ended] == [
        ((ALERT_ANOMALY, "pca_t2q", "temp", "warning"), True)
    ]
    again = mapper.apply([verdict("m1", 4, "warning", detectors=("pca_t2q",), top=("vib",))], now_after(4))
    assert [key(a) for a in again] == [(ALERT_ANOMALY, "pca_t2q", "vib", "warning")]


def test_soft_evidence_pages_only_when_it_persists_and_hard_evidence_at_once() -> None:
    mapper = AlertMapper(
        Settings(
            alerting={
                "resolve_after_clear_windows": 2,
                "page_after_windows": 3,
                "page_within_windows": 4,
                "page_min_score": 1.5,
            }
        )
    )
    soft = {"detectors": ("pca_t2q",), "top": ("temp",), "score": 1.6}
    # Anomalous in every window, but at 1.2 x the model's limit (below page_min_score): no page.
    for n in range(0, 8):
        assert mapper.apply([verdict("m5", n, "warning", detectors=("pca_t2q",), score=1.2)], now_after(n)) == []
    # Anomalous in 1, then 2 of the last 4 windows: no page.
    assert mapper.apply([verdict("m1", 0, "warning", **soft)], now_after(0)) == []
    assert mapper.apply([verdict("m1", 1)], now_after(1)) == []
    assert mapper.apply([verdict("m1", 2, "critical", **soft)], now_after(2)) == []
    assert mapper.active.empty
    # The third of the last four: one page, at the severity of the window that opened it.
    third = mapper.apply([verdict("m1", 3, "warning", **soft)], now_after(3))
    assert [(key(a), a["startsAt"]) for a in third] == [
        ((ALERT_ANOMALY, "pca_t2q", "temp", "warning"), rfc3339((T0 + 3 * W) / 1000))
    ]
    # Isolated noisy windows spread out never page.
    for n in range(10, 30, 3):
        assert mapper.apply([verdict("m2", n, "critical", **soft)], now_after(n)) == []
    # A broken limit or a frozen sensor pages on its first window.
    hard = mapper.apply([verdict("m3", 0, "critical", hits=("vib:threshold_max",))], now_after(0))
    assert [key(a) for a in hard] == [(ALERT_ANOMALY, "threshold_max", "vib", "critical")]
    stuck = mapper.apply([verdict("m4", 0, "warning", hits=("flow:stuck",))], now_after(0))
    assert [key(a) for a in stuck] == [(ALERT_ANOMALY, "stuck", "flow", "warning")]


def test_escalation_fires_the_critical_twin_and_both_resolve_together(mapper: AlertMapper) -> None:
    mapper.apply([verdict("m1", 0, "warning", hits=("temp:zscore",), top=("temp",))], now_after(0))
    up = mapper.apply([verdict("m1", 1, "critical", hits=("temp:zscore",), top=("temp",))], now_after(1))
    # Only the new critical alert is posted (the warning one keeps firing, muted by the inhibit rule).
    assert [(key(a), a["startsAt"]) for a in up] == [
        ((ALERT_ANOMALY, "zscore", "temp", "critical"), rfc3339(T0 / 1000))
    ]
    # Back to warning inside the episode: no de-escalation, nothing posted, both keep firing.
    assert mapper.apply([verdict("m1", 2, "warning", hits=("temp:zscore",), top=("temp",))], now_after(2)) == []
    firing = sorted(key(a) for a in mapper.firing_alerts(now_after(2)))
    assert firing == [(ALERT_ANOMALY, "zscore", "temp", "critical"), (ALERT_ANOMALY, "zscore", "temp", "warning")]
    assert mapper.counters.alerts_firing == 2
    mapper.apply([verdict("m1", 3)], now_after(3))
    end = mapper.apply([verdict("m1", 4)], now_after(4))
    assert sorted((key(a), resolved(a, now_after(4))) for a in end) == [
        ((ALERT_ANOMALY, "zscore", "temp", "critical"), True),
        ((ALERT_ANOMALY, "zscore", "temp", "warning"), True),
    ]
    assert mapper.counters.alerts_firing == 0


def test_resolves_after_n_consecutive_clear_windows_of_its_machine(mapper: AlertMapper) -> None:
    hit = {"hits": ("temp:threshold_max",), "top": ("temp",)}
    mapper.apply([verdict("m1", 0, "critical", **hit)], now_after(0))
    assert mapper.apply([verdict("m1", 1)], now_after(1)) == []  # 1 clear window of 2
    assert mapper.apply([verdict("m1", 2, "critical", **hit)], now_after(2)) == []  # back: the count restarts
    assert mapper.apply([verdict("m1", 3)], now_after(3)) == []
    assert mapper.apply([verdict("m2", 4), verdict("m2", 5)], now_after(5)) == []  # other machines do not count
    # Other evidence on the same machine is the same incident: it holds it open, nothing new is paged.
    assert mapper.apply([verdict("m1", 4, "warning", hits=("vib:stuck",), top=("vib",))], now_after(5)) == []
    assert mapper.apply([verdict("m1", 5)], now_after(6)) == []
    end = mapper.apply([verdict("m1", 6)], now_after(7))
    assert [(key(a), resolved(a, now_after(7)), a["startsAt"]) for a in end] == [
        ((ALERT_ANOMALY, "threshold_max", "temp", "critical"), True, rfc3339(T0 / 1000))
    ]


def test_a_dead_machine_escalates_its_incident_or_opens_one(mapper: AlertMapper) -> None:
    mapper.apply([verdict("m1", 0, "warning", hits=("temp:zscore",), top=("temp",))], now_after(0))
    dead = mapper.apply([verdict("m1", 4, "critical", kind="dead_machine", detectors=("dead_machine",))], now_after(4))
    assert [key(a) for a in dead] == [(ALERT_ANOMALY, "zscore", "temp", "critical")]  # the same incident, escalated
    assert dead[0]["annotations"]["description"].startswith("No window statistics from m1 since ")
    # Silence is no clear window: the incident is neither resolved nor counted down.
    assert mapper.apply([verdict("m2", 5)], now_after(5)) == []
    assert len(mapper.active) == 1
    # A machine silent without an open incident: a critical page of its own, for the whole machine.
    other = mapper.apply([verdict("m3", 4, "critical", kind="dead_machine", detectors=("dead_machine",))], now_after(4))
    assert [key(a) for a in other] == [(ALERT_ANOMALY, "dead_machine", "*", "critical")]
    # Back with data: its clear windows resolve it like any incident.
    mapper.apply([verdict("m3", 6)], now_after(6))
    back = mapper.apply([verdict("m3", 7)], now_after(7))
    assert [(key(a), resolved(a, now_after(7))) for a in back] == [
        ((ALERT_ANOMALY, "dead_machine", "*", "critical"), True)
    ]
    assert list(mapper.active["equipment_id"]) == ["m1"]


def test_replays_are_skipped_and_a_batch_is_processed_window_by_window(mapper: AlertMapper) -> None:
    anomalous = verdict("m1", 0, "warning", hits=("temp:zscore",), top=("temp",))
    assert len(mapper.apply([anomalous], now_after(0))) == 1
    assert mapper.apply([anomalous, verdict("m1", 1)], now_after(1)) == []  # window 0 again: skipped
    # Window 1 redelivered: must not count as a second clear window.
    assert mapper.apply([verdict("m1", 1, emitted=7)], now_after(1)) == []
    assert mapper.counters.stale_verdicts == 2
    assert len(mapper.active) == 1
    # Several windows of a machine in one batch (catching up), out of order: applied in window order, so the
    # alert fires and resolves inside the batch and is posted resolved only (Alertmanager does not page).
    batch = [verdict("m1", 4), verdict("m1", 2), verdict("m1", 3)]
    out = mapper.apply(batch, now_after(4))
    assert [(key(a), resolved(a, now_after(4))) for a in out] == [((ALERT_ANOMALY, "zscore", "temp", "warning"), True)]
    burst = [verdict("m3", 0, "warning", hits=("vib:stuck",)), verdict("m3", 1), verdict("m3", 2)]
    assert [resolved(a, now_after(2)) for a in mapper.apply(burst, now_after(2))] == [True]


def test_bad_records_are_skipped_and_counted(mapper: AlertMapper) -> None:
    good = verdict("m1", 0, "warning", hits=("temp:zscore",), top=("temp",))
    bad = [
        b"not json",
        orjson.dumps({"site": "north", "kind": "window"}),
        orjson.dumps({**orjson.loads(good), "severity": "apocalyptic"}),
        orjson.dumps({**orjson.loads(good), "detectors": "pca_t2q"}),
    ]
    alerts = mapper.apply([*bad, good], now_after(0))
    assert [key(a) for a in alerts] == [(ALERT_ANOMALY, "zscore", "temp", "warning")]
    assert mapper.counters.bad_verdicts == 4
    assert mapper.counters.verdicts_consumed == 5


def test_rebuilt_mapper_resolves_what_the_previous_one_fired(mapper: AlertMapper) -> None:
    mapper.apply(
        [verdict("m1", 0, "warning", detectors=("isolation_forest",), hits=("temp:zscore",), top=("vib",))],
        now_after(0),
    )
    mapper.apply([verdict("m1", 1, "critical", detectors=("isolation_forest",), top=("temp",))], now_after(1))
    mapper.apply([verdict("m2", 1, "critical", kind="dead_machine", detectors=("dead_machine",))], now_after(1))
    # What Alertmanager returns from GET /api/v2/alerts (plus fields the mapper must ignore).
    in_am = [{**a, "fingerprint": "x", "status": {"state": "active"}} for a in mapper.firing_alerts(now_after(1))]
    in_am.append({"labels": {"alertname": "VigilSiteSilent", "site": "north"}, "annotations": {}})
    restarted = AlertMapper(Settings(alerting={"resolve_after_clear_windows": 2}))
    assert restarted.seed(in_am) == 2  # m1 (warning + critical folded) and m2
    assert restarted.counters.alerts_firing == 3
    # A replay of windows the old publisher already posted changes nothing.
    assert (
        restarted.apply([verdict("m1", 1, "critical", detectors=("isolation_forest",), top=("temp",))], now_after(1))
        == []
    )
    # The incident goes on with other evidence: still the rebuilt alert (its labels survived).
    assert restarted.apply([verdict("m1", 2, "warning", detectors=("pca_t2q",), top=("temp",))], now_after(2)) == []
    restarted.apply([verdict("m1", 3), verdict("m2", 3)], now_after(3))
    end = restarted.apply([verdict("m1", 4), verdict("m2", 4)], now_after(4))
    assert sorted((key(a), resolved(a, now_after(4)), a["startsAt"]) for a in end) == [
        ((ALERT_ANOMALY, "dead_machine", "*", "critical"), True, rfc3339((T0 + W) / 1000)),
        ((ALERT_ANOMALY, "isolation_forest", "vib", "critical"), True, rfc3339(T0 / 1000)),
        ((ALERT_ANOMALY, "isolation_forest", "vib", "warning"), True, rfc3339(T0 / 1000)),
    ]
    assert restarted.active.empty


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('site="north"', {"name": "site", "value": "north", "isRegex": False, "isEqual": True}),
        ("severity!=warning", {"name": "severity", "value": "warning", "isRegex": False, "isEqual": False}),
        ('alertname=~"Vigil.*"', {"name": "alertname", "value": "Vigil.*", "isRegex": True, "isEqual": True}),
        (r'sensor!~"a\"b"', {"name": "sensor", "value": 'a"b', "isRegex": True, "isEqual": False}),
    ],
)
def test_silence_matchers_parse_like_amtool(text: str, expected: dict[str, Any]) -> None:
    assert parse_matcher(text) == expected


def test_bad_matcher_says_how_to_write_one() -> None:
    with pytest.raises(ValueError, match="name=value"):
        parse_matcher("site north")


def test_a_step_is_one_incident_from_its_first_jump_to_its_end(mapper: AlertMapper) -> None:
    """Step fault: the jump fires at the start and at the end, the threshold for the whole step: one page."""
    start = mapper.apply([verdict("m1", 0, "critical", hits=("vib:threshold_max", "vib:rate_of_change"))], now_after(0))
    assert [key(a) for a in start] == [(ALERT_ANOMALY, "threshold_max", "vib", "critical")]
    for n in (1, 2, 3):  # the jump is gone, the breach goes on: nothing changes, nothing resolves
        assert mapper.apply([verdict("m1", n, "critical", hits=("vib:threshold_max",))], now_after(n)) == []
    assert mapper.apply([verdict("m1", 4, "warning", hits=("vib:rate_of_change",))], now_after(4)) == []
    assert mapper.apply([verdict("m1", 5)], now_after(5)) == []
    end = mapper.apply([verdict("m1", 6)], now_after(6))
    assert [(key(a), resolved(a, now_after(6))) for a in end] == [
        ((ALERT_ANOMALY, "threshold_max", "vib", "critical"), True)
    ]
