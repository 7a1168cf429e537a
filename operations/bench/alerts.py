"""`vigil bench alerts`: what the on-call people of a live fleet receive, counted against the ground truth.

The page figures of `vigil evaluate --dataset sim` replay the job's verdicts through the publisher's policy
offline; this bench measures the same figures on the real thing. The whole local stack runs (edge, Kafka,
Flink, ClickHouse, Prometheus, Alertmanager, the publisher, the relay) with the models the demo uses
(trained on simulated history, :mod:`operations.training.simulated`), and a simulated fleet streams in
real time for ``minutes`` with its normal operation (load and speed regimes, starts, daily cycles, machine
to machine variation) and random labelled faults at ``fault_rate`` per machine-hour. Only Slack and the SMS
provider are the local stand-in.

What is counted is what the relay delivered (the stand-in answered 2xx) on the Slack receiver, every page's
channel: its outbox row gives the alert's labels, status and delivery time, and the stand-in's own log is
checked against it. Each firing alert of a machine is one page of that machine (Alertmanager may group several
into one message; the goal is stated per machine), true when the machine had a labelled fault from 30 s
before its start to 2 min after its end, with the definitions of :mod:`operations.evaluate.pages` (faults
paged, delay = delivery - fault start, chattering, notifications per site and 10 minutes, floods).
Alerts about no machine (the pipeline's self-monitoring) are counted apart: in a healthy run there are none.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from rich.console import Console
from rich.live import Live
from rich.table import Table

from alerting.diagnoses import FOLLOW_UP_ALERTNAME
from alerting.store import DELIVERED, Delivery, Store
from edge.simulator.fleet import Fleet
from edge.simulator.ground_truth import GroundTruthWriter
from operations.bench.latency import bench_settings, simulator_thread, start_bench_stack
from operations.bench.throughput import machine_description
from operations.demo import end_planned_stop, silence_planned_stop
from operations.evaluate.pages import (
    BUCKET_MS,
    FLOOD_PER_10_MIN,
    PageScorecard,
    page_scorecard,
    page_summary,
    print_page_scorecard,
)
from operations.evaluate.sim import faults_frame
from operations.training.simulated import ensure_simulated_models, live_detector_models
from vigil.settings import Settings

ALERT_COLUMNS = ["alertname", "severity", "site", "equipment_id", "detector", "sensor", "at_ms", "firing"]


@dataclass
class AlertsBenchResult:
    when: str
    machine_description: str
    machines: int
    minutes: float
    fault_rate_per_machine_hour: float
    samples_per_sensor: int
    summary: dict[str, Any]  # operations.evaluate.pages.page_summary of the run
    system_pages: dict[str, int]  # self-monitoring alerts (no machine) that fired, by alertname
    diagnosis_updates: int  # the agents' diagnoses sent as follow-ups of pages (updates, not pages)
    sms_firing: int  # SMS messages the relay delivered with a firing alert
    standin_requests: dict[str, int]  # what the stand-in logged as answered 2xx, per channel
    recipients: list[dict[str, Any]]  # recipient_load: firing messages per on-call recipient and 10 minutes
    delivered_not_logged: int  # Slack messages the relay counts as delivered that the stand-in has no record of
    models: list[str] = field(default_factory=list)  # the live models the scoring job used, with their source


def delivered_alerts(rows: list[Delivery], first_ms: int, end_ms: int) -> tuple[pd.DataFrame, dict[str, int], int]:
    """The alerts a receiver's delivered outbox rows carried in [first_ms, end_ms]: one row per (alert, status,
    start) at its first delivery, with the labels :func:`operations.evaluate.pages.page_scorecard` counts;
    the self-monitoring alerts (no machine) that fired, by alertname; and the diagnosis updates sent."""
    seen: dict[tuple[str, str, str], dict[str, object]] = {}
    system: dict[str, int] = {}
    updates = 0
    for row in rows:
        if row.state != DELIVERED or row.delivered_at is None:
            continue
        at_ms = int(row.delivered_at * 1000)
        if not first_ms <= at_ms <= end_ms:
            continue
        key = (row.fingerprint, row.alert_status, row.starts_at)
        if key in seen:  # another recipient of the same alert: one page of the machine
            if seen[key]:
                seen[key]["at_ms"] = min(int(seen[key]["at_ms"]), at_ms)  # type: ignore[call-overload]
            continue
        labels = row.alert().labels
        if row.alertname == FOLLOW_UP_ALERTNAME:  # an update on a page already sent, not a page
            updates += 1
            seen[key] = {}
            continue
        if not labels.get("equipment_id"):
            if row.alert_status == "firing":
                system[row.alertname] = system.get(row.alertname, 0) + 1
            seen[key] = {}
            continue
        seen[key] = {
            **{k: labels.get(k, "") for k in ("alertname", "severity", "site", "equipment_id", "detector", "sensor")},
            "at_ms": at_ms,
            "firing": row.alert_status == "firing",
        }
    frame = pd.DataFrame([v for v in seen.values() if v], columns=ALERT_COLUMNS)
    return frame.astype({"at_ms": "int64", "firing": bool}), system, updates


def recipient_load(rows: list[Delivery], first_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """Per (receiver, recipient): the firing messages that reached them in [first_ms, end_ms) (a message may
    carry several alerts: Alertmanager's grouping; diagnosis updates are not counted), per 10-minute bucket:
    mean, worst, and floods (buckets with more than the alarm-management standards' 10) -- the load a person
    on call lives with."""
    messages: dict[tuple[str, str], set[tuple[str, int]]] = {}
    for row in rows:
        if row.state != DELIVERED or row.delivered_at is None or row.alert_status != "firing":
            continue
        if row.alertname == FOLLOW_UP_ALERTNAME:  # the agents' diagnosis of a page already sent: an update
            continue
        at_ms = int(row.delivered_at * 1000)
        if first_ms <= at_ms < end_ms:
            bucket = (at_ms - first_ms) // BUCKET_MS
            messages.setdefault((row.receiver, row.recipient), set()).add((row.batch_key or str(row.id), bucket))
    buckets = max(1, -(-(end_ms - first_ms) // BUCKET_MS))
    out = []
    for (receiver, recipient), sent in sorted(messages.items()):
        per = [sum(b == i for _, b in sent) for i in range(buckets)]
        out.append(
            {
                "receiver": receiver,
                "recipient": recipient,
                "messages": len(sent),
                "mean_per_10_min": len(sent) / buckets,
                "max_per_10_min": max(per),
                "flood_buckets": sum(n > FLOOD_PER_10_MIN for n in per),
            }
        )
    return out


def _live_table(title: str, fleet: Fleet, started_ms: int, standin: list[dict[str, Any]]) -> Table:
    now = int(time.time() * 1000)
    faults = [f for f in fleet.fault_history if started_ms <= f.start_ms <= now]
    faulty = {f.machine for f in faults}
    slack = [m for m in standin if m["channel"] == "slack" and m["firing"]]
    named = {machine for m in slack for machine in m["machines"]}
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("faults started", str(len(faults)))
    table.add_row("Slack firing messages", str(len(slack)))
    table.add_row("machines named in them: with / without a fault", f"{len(named & faulty)} / {len(named - faulty)}")
    return table


def measure_alerts(
    settings: Settings,
    machines: int,
    minutes: float,
    console: Console,
    train_hours: float = 4.0,
) -> tuple[AlertsBenchResult, PageScorecard]:
    if train_hours > 0:
        ensure_simulated_models(settings, console, hours=train_hours)
    models = live_detector_models(settings)
    standin = start_bench_stack(settings, console)
    writer = GroundTruthWriter(settings.ground_truth_path)
    fleet = Fleet.from_settings(settings, machines=machines, ground_truth=writer)
    stop = threading.Event()
    simulator = simulator_thread(settings, fleet, stop)
    # As in the demo, a silence an earlier run set for its planned stop ends once the fleet had the start-up
    # grace to report again; the scored part starts then (the models' history and the z-score baselines are
    # full by that time too).
    grace_s = settings.prometheus.startup_grace_s
    first_ms = int((time.time() + grace_s) * 1000)
    end_ms = first_ms + int(minutes * 60_000)
    unsilence = threading.Timer(grace_s, end_planned_stop, (settings, console))
    unsilence.daemon = True
    simulator.start()
    unsilence.start()
    rate = settings.simulator.fault_rate_per_machine_hour
    title = f"bench alerts: {machines:,} machines, {minutes:g} minutes, {rate:g} faults per machine-hour"
    messages: list[dict[str, Any]] = []
    try:
        with Live(_live_table(title, fleet, first_ms, messages), console=console, refresh_per_second=1) as live:
            while (now := int(time.time() * 1000)) < end_ms and simulator.is_alive():
                time.sleep(5)
                with contextlib.suppress(requests.RequestException):  # shown again on the next round
                    messages = standin.messages()
                left = f"{(end_ms - now) / 60_000:.1f} min left" if now >= first_ms else "start-up grace, not scored"
                live.update(_live_table(f"{title} ({left})", fleet, first_ms, messages))
    finally:
        unsilence.cancel()
        # The fleet stops on purpose: silence it as an operator would, so the stop pages nobody.
        silence_planned_stop(settings, console)
        stop.set()
        simulator.join(30)
        writer.close()
    if int(time.time() * 1000) < end_ms:
        raise RuntimeError("the simulator stopped early: see the log above (is the edge service up?)")

    store = Store(settings.alerting_state_path)
    try:
        slack_rows, sms_rows = store.find(receiver="slack"), store.find(receiver="sms")
    finally:
        store.close()
    alerts, system, updates = delivered_alerts(slack_rows, first_ms, end_ms)
    sms_alerts, _, _ = delivered_alerts(sms_rows, first_ms, end_ms)
    machines_frame = pd.DataFrame([(m.equipment_id, m.site) for m in fleet.machines], columns=["equipment_id", "site"])
    labels = [lb for lb in fleet.fault_history if lb.start_ms < end_ms]
    card = page_scorecard(alerts, faults_frame(labels), first_ms, end_ms, machines_frame)
    # The relay's word against the stand-in's log, over the whole run (both started empty): messages, not rows.
    received = [m for m in standin.messages() if m["at_ms"] <= end_ms]
    sent = {
        r.batch_key or str(r.id)
        for r in slack_rows
        if r.state == DELIVERED and r.delivered_at is not None and r.delivered_at * 1000 <= end_ms
    }
    result = AlertsBenchResult(
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine_description=machine_description(),
        machines=machines,
        minutes=minutes,
        fault_rate_per_machine_hour=settings.simulator.fault_rate_per_machine_hour,
        samples_per_sensor=settings.simulator.samples_per_sensor,
        summary=page_summary(card),
        system_pages=system,
        diagnosis_updates=updates,
        recipients=recipient_load(slack_rows + sms_rows, first_ms, end_ms),
        sms_firing=int(sms_alerts["firing"].sum()) if len(sms_alerts) else 0,
        standin_requests={ch: sum(m["channel"] == ch for m in received) for ch in ("slack", "sms")},
        delivered_not_logged=max(0, len(sent) - sum(m["channel"] == "slack" for m in received)),
        models=sorted(f"{v.equipment_type}/{v.detector} {v.version} ({v.metadata.get('source', '?')})" for v in models),
    )
    return result, card


def run_alerts_bench(
    settings: Settings,
    machines: int,
    minutes: float,
    fault_rate: float,
    topology: str,
    output: Path | None,
    console: Console,
    train_hours: float = 4.0,
) -> AlertsBenchResult:
    if minutes <= 0 or machines < 1:
        raise ValueError(f"--minutes must be > 0 and --machines >= 1, got {minutes} and {machines}")
    settings = bench_settings(settings, topology)
    sim = settings.simulator.model_copy(update={"fault_rate_per_machine_hour": fault_rate})
    settings = settings.model_copy(update={"simulator": sim})
    result, card = measure_alerts(settings, machines, minutes, console, train_hours=train_hours)
    console.print(
        f"[bold]vigil bench alerts[/] — {result.when} — {result.machine_description}\n"
        f"{machines:,} machines x {minutes:g} minutes live ({result.samples_per_sensor} samples per sensor per "
        f"5-s batch), random faults at {fault_rate:g} per machine-hour ({settings.simulator.fault_mix} mix)"
    )
    print_page_scorecard(card, console)
    console.print(
        f"SMS with a firing alert: {result.sms_firing}; self-monitoring alerts that fired: "
        f"{result.system_pages or 'none'}; stand-in requests answered 2xx: slack {result.standin_requests['slack']}, "
        f"sms {result.standin_requests['sms']}"
        + (
            f"; [red]{result.delivered_not_logged} delivered Slack messages missing from the stand-in's log[/]"
            if result.delivered_not_logged
            else ""
        )
    )
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(asdict(result), indent=2, default=str))
        console.print(f"figures written to {output}")
    return result
