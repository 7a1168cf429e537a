"""`vigil bench latency`: from an injected fault to the Slack and SMS request at the receiver, end to end.

The whole local stack runs (edge, Flink, ClickHouse, Alertmanager, the alert publisher, the notification relay)
with the simulated fleet streaming in real time; only Slack and the SMS provider are the local stand-in, which
records when each request arrived. The bench schedules faults on distinct machines at known instants (uniformly
spread, so they land anywhere inside a 5-s window), and for each fault reads where its first notification went:

- fault start           the instant the simulator's signal changes (the ground-truth label);
- window end            end of the first window whose verdict flagged the machine (ClickHouse ``anomalies``);
- verdict emitted       when Flink emitted that verdict (``emitted_at``);
- relay queued          when the relay accepted Alertmanager's webhook for it (its outbox row, ``created_at``);
- Slack / SMS arrival   when the stand-in received the request (its ``received_at``).

So latency = (fault -> window end: the window has to finish) + (window close and scoring) + (publisher and
Alertmanager) + (relay delivery). Duplicates: the same message body delivered (2xx) twice to the same
destination. The bench never pages anyone real: Slack, SMS and SMTP all point at the stand-in.

With ``kills`` the alert path is also crashed under the faults: each named service is SIGKILLed (its process
group, as `vigil chaos` does) at evenly spaced instants of the fault schedule, left dead ``down_s``, and
restarted through the stack. A fault belongs to a kill when it started from 10 s before the kill to 30 s
after the restart; its page is lost when no Slack (or SMS) message about its machine arrived by the end.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from rich.console import Console
from rich.live import Live
from rich.table import Table

from alerting.store import Store
from connectors.clickhouse import make_client
from edge.simulator.equipment import EQUIPMENT_TYPES
from edge.simulator.fleet import Fleet
from edge.simulator.ground_truth import GroundTruthWriter
from edge.simulator.runner import run_simulation
from operations.bench.throughput import _make_sender, machine_description
from operations.chaos import kill
from operations.stack.services import ALL_PIPELINE, INFRA, Stack, pipeline_names
from operations.training.simulated import ensure_simulated_models
from vigil.settings import Settings

MACHINE_ID = re.compile(r"\b(?:pump|motor|compressor|fan)-\d{4}\b")
KILL_BEFORE_MS, KILL_AFTER_MS = 10_000, 30_000  # a fault this close to an outage belongs to it
SLACK_API_PATH = "/api/chat.postMessage"  # the stand-in's Slack Web API (threads); /slack/... are webhooks
STEP_SPANS = 5.0  # step size in healthy spans of the sensor: a hard fault the threshold rule sees in one window
SENSOR = "vibration_rms"  # every simulated equipment type has it


@dataclass
class FaultTiming:
    machine: str
    site: str
    start_ms: int
    window_end_ms: int | None = None
    emitted_ms: int | None = None
    relay_ms: int | None = None  # relay accepted the first Slack webhook of the machine
    slack_ms: int | None = None
    sms_ms: int | None = None

    def latency_s(self, channel: str) -> float | None:
        arrived = self.slack_ms if channel == "slack" else self.sms_ms
        return None if arrived is None else (arrived - self.start_ms) / 1000


@dataclass
class KillTiming:
    service: str
    killed_ms: int
    restarted_ms: int = 0
    faults: int = 0  # injected faults that started around the outage (see the module docstring)
    slack_lost: int = 0
    sms_lost: int = 0
    slack_max_s: float | None = None  # the slowest of those faults' Slack pages

    def owns(self, start_ms: int) -> bool:
        return self.killed_ms - KILL_BEFORE_MS <= start_ms <= (self.restarted_ms or self.killed_ms) + KILL_AFTER_MS


@dataclass
class LatencyResult:
    machines: int
    topology: str
    faults: int
    when: str
    machine_description: str
    slack_found: int
    sms_found: int
    percentiles: dict[str, dict[str, float | None]]  # channel or stage -> {p50, p95, p99, max}
    duplicates: dict[str, int]  # channel -> messages delivered more than once (extra copies)
    unexpected: dict[str, int]  # channel -> firing messages naming only machines without an injected fault
    timings: list[FaultTiming] = field(default_factory=list)
    kills: list[KillTiming] = field(default_factory=list)


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    arr = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in (50, 95, 99)}
    out["max"] = round(float(arr.max()), 2)
    out["n"] = len(values)
    return out


def bench_settings(settings: Settings, topology: str) -> Settings:
    """The bench's settings: no random faults (only the planned ones), every channel to the local stand-in."""
    sim = settings.simulator.model_copy(update={"fault_rate_per_machine_hour": 0.0})
    alerting = settings.alerting.model_copy(
        update={
            "use_standin": True,
            "slack_webhook_url": None,
            "slack_webhook_url_file": None,
            "sms_account_sid": None,
            "smtp_host": None,
        }
    )
    flink = settings.flink.model_copy(update={"topology": topology})
    # A relay state of its own: a backlog another run left in the outbox must not be delivered during this one.
    state = settings.data_dir / "bench" / f"relay-{datetime.now(UTC):%Y%m%dT%H%M%S}.db"
    alerting = alerting.model_copy(update={"state_path": state})
    return settings.model_copy(update={"simulator": sim, "alerting": alerting, "flink": flink})


def start_bench_stack(settings: Settings, console: Console) -> StandInClient:
    """The stack up with a clean pipeline started with the bench's settings (no relay left with real endpoints),
    and the stand-in's record cleared; returns the stand-in's client."""
    stack = Stack(settings)
    stack.down(ALL_PIPELINE)
    with console.status("starting the stack and the pipeline...") as status:
        stack.up(INFRA + pipeline_names(settings), on_started=lambda s: status.update(f"{s.name} is up..."))
    standin = StandInClient(settings)
    standin.clear()
    return standin


def simulator_thread(settings: Settings, fleet: Any, stop: threading.Event) -> threading.Thread:
    """The fleet streaming in real time through gateway clients until ``stop`` (not started yet)."""
    return threading.Thread(
        target=run_simulation,
        kwargs=dict(settings=settings, realtime=True, stop=stop, fleet=fleet, make_sender=_make_sender(settings)),
        name="simulator",
        daemon=True,
    )


def plan_faults(fleet: Any, count: int, first_ms: int, spacing_ms: int, duration_ms: int, seed: int) -> list[Any]:
    """``count`` step faults on distinct machines, the i-th at a uniformly random instant of its slot
    [first + i * spacing, first + (i + 1) * spacing): anywhere inside a window, never two at once."""

    rng = np.random.default_rng(seed)
    if count > len(fleet.machines):
        raise ValueError(f"{count} faults need as many machines; the fleet has {len(fleet.machines)}")
    chosen = rng.choice(len(fleet.machines), size=count, replace=False)
    labels = []
    for i, index in enumerate(chosen):
        machine = fleet.machines[int(index)]
        spec = EQUIPMENT_TYPES[machine.equipment_type].sensors
        span = next(s.span for s in spec if s.name == SENSOR)
        start = first_ms + i * spacing_ms + int(rng.integers(0, spacing_ms))
        labels.append(
            fleet.inject("step", machine.equipment_id, start, start + duration_ms, [SENSOR], STEP_SPANS * span)
        )
    return labels


class StandInClient:
    """The stand-in's recorded requests, split into Slack and SMS messages with the machine they name."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"http://127.0.0.1:{settings.alerting.standin_port}"

    def clear(self) -> None:
        requests.delete(f"{self.url}/requests", timeout=5).raise_for_status()

    def messages(self) -> list[dict[str, Any]]:
        """Delivered (2xx) Slack and SMS requests: channel, destination, text, machine, firing, arrival (ms)."""
        out = []
        for record in requests.get(f"{self.url}/requests", timeout=10).json():
            status = record["response"]["status"]
            if not 200 <= status < 300:
                continue
            if record["path"].startswith("/slack/") or record["path"] == SLACK_API_PATH:
                if not (record.get("slack_answer") or {"ok": True}).get("ok"):  # the Web API refused it
                    continue
                payload = record.get("json") or {}
                channel, text = "slack", payload.get("text", "")
                to, thread = payload.get("channel") or record["path"], payload.get("thread_ts")
            elif record["path"].endswith("/Messages.json"):
                form = record.get("form") or {}
                channel, text, to, thread = "sms", form.get("Body", ""), form.get("To", ""), None
            else:
                continue
            # A message may tell of several machines (Alertmanager grouped them): it counts for each one it names
            # (Slack: anywhere in the blocks; SMS: in the text, which may have been cut to fit).
            named = sorted(set(MACHINE_ID.findall(record["body"] if channel == "slack" else text)))
            out.append(
                {
                    "channel": channel,
                    "to": to,
                    "text": text,
                    "body": record["body"],
                    "machines": named,
                    "firing": not text.startswith("RESOLVED"),
                    "thread_ts": thread,  # a reply in a Slack thread (Web API), else None
                    "at_ms": int(record["received_at"] * 1000),
                }
            )
        return out


def _first_arrivals(messages: list[dict[str, Any]], timings: list[FaultTiming]) -> None:
    by_machine = {t.machine: t for t in timings}
    for m in sorted(messages, key=lambda m: m["at_ms"]):
        for machine in m["machines"]:
            timing = by_machine.get(machine)
            if timing is None or not m["firing"] or m["at_ms"] < timing.start_ms:
                continue
            attr = f"{m['channel']}_ms"
            if getattr(timing, attr) is None:
                setattr(timing, attr, m["at_ms"])


def _first_verdicts(settings: Settings, timings: list[FaultTiming]) -> None:

    client = make_client(settings.clickhouse, "admin")
    frame = client.query_df(
        "SELECT equipment_id, toUnixTimestamp64Milli(window_end) AS wend, toUnixTimestamp64Milli(emitted_at) AS emi "
        f"FROM {settings.clickhouse.anomalies_table} FINAL WHERE is_anomaly AND kind = 'window' "
        "AND equipment_id IN {ids:Array(String)} ORDER BY window_end",
        parameters={"ids": [t.machine for t in timings]},
    )
    for t in timings:
        rows = frame[(frame.equipment_id == t.machine) & (frame.wend > t.start_ms)]
        if len(rows):
            t.window_end_ms, t.emitted_ms = int(rows.wend.iloc[0]), int(rows.emi.iloc[0])


def _relay_queued(settings: Settings, timings: list[FaultTiming]) -> None:

    store = Store(settings.alerting_state_path)
    try:
        rows = store.find(receiver="slack")
    finally:
        store.close()
    for t in timings:
        created = [
            r.created_at
            for r in rows
            if r.equipment_id == t.machine and r.alert_status == "firing" and r.created_at * 1000 >= t.start_ms
        ]
        if created:
            t.relay_ms = int(min(created) * 1000)


def _duplicates(messages: list[dict[str, Any]]) -> dict[str, int]:
    seen: dict[tuple[str, str, str], int] = {}
    for m in messages:
        key = (m["channel"], m["to"], m["body"] if m["channel"] == "slack" else m["text"])
        seen[key] = seen.get(key, 0) + 1
    return {ch: sum(n - 1 for (c, _, _), n in seen.items() if c == ch and n > 1) for ch in ("slack", "sms")}


def stage_breakdown(timings: list[FaultTiming]) -> dict[str, list[float]]:
    """Seconds spent in each stage by each fault whose stages were all seen (Slack as the final hop)."""
    stages: dict[str, list[float]] = {
        "fault -> window end": [],
        "window end -> verdict emitted": [],
        "verdict -> relay queued (publisher, Alertmanager)": [],
        "relay queued -> Slack received": [],
    }
    for t in timings:
        points = (t.start_ms, t.window_end_ms, t.emitted_ms, t.relay_ms, t.slack_ms)
        if any(p is None for p in points):
            continue
        for name, a, b in zip(stages, points, points[1:], strict=False):
            stages[name].append((b - a) / 1000)  # type: ignore[operator]
    return stages


def _live_table(title: str, timings: list[FaultTiming], messages: list[dict[str, Any]], now_ms: int) -> Table:
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    started = sum(t.start_ms <= now_ms for t in timings)
    table.add_row("faults started / planned", f"{started} / {len(timings)}")
    for channel in ("slack", "sms"):
        hit = {machine for m in messages if m["channel"] == channel and m["firing"] for machine in m["machines"]}
        table.add_row(f"faulty machines with a {channel} message", str(sum(t.machine in hit for t in timings)))
    return table


def _crash_services(
    stack: Stack, services: list[str], at_ms: list[int], down_s: float, out: list[KillTiming], stop: threading.Event
) -> None:
    """SIGKILL each service at its instant, restart it ``down_s`` later; ``out`` gets one timing per kill."""
    for service, when in zip(services, at_ms, strict=True):
        if stop.wait(max(0.0, (when - time.time() * 1000) / 1000)):
            return
        timing = KillTiming(service, int(time.time() * 1000))
        out.append(timing)
        kill(stack, service)
        time.sleep(down_s)
        stack.up((service,))
        timing.restarted_ms = int(time.time() * 1000)


def _attribute_kills(kills: list[KillTiming], timings: list[FaultTiming]) -> None:
    for k in kills:
        owned = [t for t in timings if k.owns(t.start_ms)]
        k.faults = len(owned)
        k.slack_lost = sum(t.slack_ms is None for t in owned)
        k.sms_lost = sum(t.sms_ms is None for t in owned)
        slowest = [v for t in owned if (v := t.latency_s("slack")) is not None]
        k.slack_max_s = round(max(slowest), 2) if slowest else None


def measure_latency(
    settings: Settings,
    machines: int,
    faults: int,
    spacing_s: float,
    fault_duration_s: float,
    warmup_s: float,
    tail_s: float,
    console: Console,
    seed: int = 11,
    kills: list[str] | None = None,
    down_s: float = 10.0,
) -> LatencyResult:

    stack = Stack(settings)
    standin = start_bench_stack(settings, console)
    writer = GroundTruthWriter(settings.ground_truth_path)
    fleet = Fleet.from_settings(settings, machines=machines, ground_truth=writer)
    first_ms = int((time.time() + warmup_s) * 1000)
    labels = plan_faults(fleet, faults, first_ms, int(spacing_s * 1000), int(fault_duration_s * 1000), seed)
    timings = [FaultTiming(label.machine, label.site, label.start_ms) for label in labels]
    end_ms = max(t.start_ms for t in timings) + int((fault_duration_s + tail_s) * 1000)

    stop = threading.Event()
    simulator = simulator_thread(settings, fleet, stop)
    simulator.start()
    kills = list(kills or [])
    kill_timings: list[KillTiming] = []
    crasher = None
    if kills:  # evenly inside the fault schedule, never in the warm-up or the tail
        span = max(t.start_ms for t in timings) - first_ms
        at_ms = [first_ms + int(span * (i + 0.5) / len(kills)) for i in range(len(kills))]
        crasher = threading.Thread(
            target=_crash_services,
            args=(stack, kills, at_ms, down_s, kill_timings, stop),
            name="crasher",
            daemon=True,
        )
        crasher.start()
    title = f"bench latency: {machines:,} machines, {faults} faults, {settings.flink.topology} topology"
    messages: list[dict[str, Any]] = []
    try:
        with Live(_live_table(title, timings, messages, 0), console=console, refresh_per_second=1) as live:
            while (now := int(time.time() * 1000)) < end_ms and simulator.is_alive():
                time.sleep(2)
                with contextlib.suppress(requests.RequestException):  # shown again on the next round
                    messages = standin.messages()
                live.update(_live_table(f"{title} ({(end_ms - now) / 1000:.0f} s left)", timings, messages, now))
    finally:
        stop.set()
        simulator.join(30)
        if crasher is not None:
            crasher.join(down_s + 120)
        writer.close()
    if not simulator.is_alive() and int(time.time() * 1000) < end_ms:
        raise RuntimeError("the simulator stopped early: see the log above (is the edge service up?)")

    messages = standin.messages()
    _first_arrivals(messages, timings)
    _first_verdicts(settings, timings)
    _relay_queued(settings, timings)
    _attribute_kills(kill_timings, timings)
    faulty = {t.machine for t in timings}
    percentiles = {ch: _pct([v for t in timings if (v := t.latency_s(ch)) is not None]) for ch in ("slack", "sms")}
    percentiles |= {name: _pct(values) for name, values in stage_breakdown(timings).items()}
    return LatencyResult(
        machines=machines,
        topology=settings.flink.topology,
        faults=len(timings),
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine_description=machine_description(),
        slack_found=sum(t.slack_ms is not None for t in timings),
        sms_found=sum(t.sms_ms is not None for t in timings),
        percentiles=percentiles,
        duplicates=_duplicates(messages),
        unexpected={
            ch: sum(
                1
                for m in messages
                if m["channel"] == ch and m["firing"] and m["machines"] and not set(m["machines"]) & faulty
            )
            for ch in ("slack", "sms")
        },
        timings=timings,
        kills=kill_timings,
    )


def results_table(result: LatencyResult) -> Table:
    table = Table(
        title=f"vigil bench latency — {result.when} — {result.machine_description}\n"
        f"{result.machines:,} machines, {result.faults} injected faults, "
        f"{result.topology} topology"
    )
    for column in ("path", "found", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="right" if column != "path" else "left")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    for name, stats in result.percentiles.items():
        label = {"slack": "fault -> Slack request", "sms": "fault -> SMS request"}.get(name, f"  {name}")
        found = {"slack": result.slack_found, "sms": result.sms_found}.get(name, stats.get("n"))
        table.add_row(
            label,
            f"{found}/{result.faults}" if name in ("slack", "sms") else str(found),
            *(fmt(stats[k]) for k in ("p50", "p95", "p99", "max")),
        )
    return table


def kills_table(result: LatencyResult) -> Table:
    table = Table(title="alert path crashed under the faults (SIGKILL, restart)")
    for column in ("service", "down s", "faults around it", "Slack lost", "SMS lost", "slowest Slack"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for k in result.kills:
        down = (k.restarted_ms - k.killed_ms) / 1000 if k.restarted_ms else None
        table.add_row(
            k.service,
            "-" if down is None else f"{down:.1f}",
            str(k.faults),
            str(k.slack_lost),
            str(k.sms_lost),
            "-" if k.slack_max_s is None else f"{k.slack_max_s:.2f} s",
        )
    return table


def run_latency_bench(
    settings: Settings,
    machines: int,
    faults: int,
    spacing_s: float,
    fault_duration_s: float,
    warmup_s: float,
    tail_s: float,
    topology: str,
    output: Path | None,
    console: Console,
    kills: list[str] | None = None,
    down_s: float = 10.0,
) -> LatencyResult:
    settings = bench_settings(settings, topology)
    unknown = set(kills or ()) - set(Stack(settings).specs())
    if unknown:
        raise ValueError(f"cannot crash {sorted(unknown)}: not services of the stack (see `vigil stack status`)")
    ensure_simulated_models(settings, console)  # the demo's models: trained on simulated history, not rules only
    result = measure_latency(
        settings, machines, faults, spacing_s, fault_duration_s, warmup_s, tail_s, console, kills=kills, down_s=down_s
    )
    console.print(results_table(result))
    if result.kills:
        console.print(kills_table(result))
    console.print(
        f"duplicate notifications at the receiver: slack {result.duplicates['slack']}, "
        f"sms {result.duplicates['sms']}; firing messages about machines without an injected fault: "
        f"slack {result.unexpected['slack']}, sms {result.unexpected['sms']}"
    )
    missed = [t.machine for t in result.timings if t.slack_ms is None or t.sms_ms is None]
    if missed:
        console.print(f"[yellow]faults without a Slack or SMS message by the end: {', '.join(missed)}[/]")
    if output:
        output.write_text(json.dumps(asdict(result), indent=2))
        console.print(f"figures written to {output}")
    return result
