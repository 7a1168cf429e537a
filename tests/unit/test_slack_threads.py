"""Where a Slack message goes (alerting.threads): a new incident, a reply, or an escalation shown in the channel."""

from __future__ import annotations

from dataclasses import dataclass

from alerting.diagnoses import FOLLOW_UP_ALERTNAME
from alerting.threads import SlackThread, plan_message, worst_severity

NOW = 10_000.0
REUSE = 1800.0


@dataclass(frozen=True)
class Row:
    equipment_id: str
    alert_status: str = "firing"
    alertname: str = "VigilAnomaly"
    severity: str = "warning"


def thread(ts: str = "1.000001", severity: str = "warning", age_s: float = 60.0) -> SlackThread:
    return SlackThread("C0000000001", ts, severity, NOW - age_s)


def test_first_page_of_a_machine_opens_its_thread() -> None:
    plan = plan_message([Row("pump-0001"), Row("pump-0002")], {}, NOW, REUSE)
    assert plan.thread is None and plan.opens == ("pump-0001", "pump-0002")


def test_same_machine_firing_again_is_a_quiet_reply_and_worse_news_is_shown() -> None:
    threads = {"pump-0001": thread()}
    same = plan_message([Row("pump-0001")], threads, NOW, REUSE)
    assert same.thread == threads["pump-0001"] and not same.broadcast and same.opens == ()
    worse = plan_message([Row("pump-0001", severity="critical")], threads, NOW, REUSE)
    assert worse.thread == threads["pump-0001"] and worse.broadcast


def test_an_old_thread_is_not_reused_for_a_new_incident() -> None:
    threads = {"pump-0001": thread(age_s=REUSE + 1)}
    plan = plan_message([Row("pump-0001")], threads, NOW, REUSE)
    assert plan.thread is None and plan.opens == ("pump-0001",)


def test_resolution_and_diagnosis_go_to_the_thread_however_old() -> None:
    threads = {"pump-0001": thread(age_s=5 * REUSE)}
    for row in (Row("pump-0001", "resolved"), Row("pump-0001", alertname=FOLLOW_UP_ALERTNAME)):
        plan = plan_message([row], threads, NOW, REUSE)
        assert plan.thread == threads["pump-0001"] and not plan.broadcast and plan.opens == ()


def test_machines_of_different_threads_or_none_go_to_the_channel() -> None:
    threads = {"pump-0001": thread("1.000001"), "pump-0002": thread("2.000002")}
    mixed = plan_message([Row("pump-0001"), Row("pump-0002")], threads, NOW, REUSE)
    assert mixed.thread is None and mixed.opens == ("pump-0001", "pump-0002")
    half = plan_message([Row("pump-0001"), Row("pump-0003")], threads, NOW, REUSE)
    assert half.thread is None
    system = plan_message([Row("", alertname="VigilPipelineStalled")], threads, NOW, REUSE)
    assert system.thread is None and system.opens == ()
    resolved_elsewhere = plan_message([Row("pump-0003", "resolved")], threads, NOW, REUSE)
    assert resolved_elsewhere.thread is None and resolved_elsewhere.opens == ()  # a resolution opens nothing


def test_worst_severity() -> None:
    assert worst_severity([Row("a", severity="warning"), Row("b", severity="critical")]) == "critical"
