"""`vigil demo` and `vigil simulate`: a simulated fleet streaming through the whole pipeline, live."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
from rich.console import Console
from rich.live import Live

from agents.diagnostic import MODEL_NAME, REGISTRY_TYPE
from connectors.alertmanager import AlertmanagerClient, AlertmanagerError
from connectors.kafka import make_consumer
from edge.gateway import GatewayClient
from edge.simulator.runner import run_simulation
from onnx_models.registry import ModelRegistry
from operations.console_cli import announce_console
from operations.monitor import PipelineMonitor
from operations.stack.services import CONSOLE, INFRA, Stack, pipeline_names
from operations.training.agents import train_diagnostic
from operations.training.simulated import ensure_simulated_models, live_detector_models
from vigil.settings import Settings


def _sender_factory(settings: Settings, target: str | None = None):
    """Each simulator stream gets its own gateway client (own channel and disk buffer)."""

    def make_sender(index: int):
        client = GatewayClient(settings, gateway_id=f"sim-gateway-{index}", target=target)
        return client.send

    return make_sender


def start_simulator(
    settings: Settings,
    machines: int,
    duration_s: float | None,
    monitor: PipelineMonitor,
    stop: threading.Event,
    realtime: bool = True,
    target: str | None = None,
) -> threading.Thread:

    def on_tick(stats) -> None:
        monitor.record_sent(
            stats.batches,
            stats.points,
            errors=stats.send_errors,
            rejected=stats.rejected_batches,
            faults_active=stats.faults_active,
        )

    def run() -> None:
        run_simulation(
            settings,
            make_sender=_sender_factory(settings, target),
            machines=machines,
            duration_s=duration_s,
            realtime=realtime,
            on_tick=on_tick,
            stop=stop,
        )

    thread = threading.Thread(target=run, name="simulator", daemon=True)
    thread.start()
    return thread


def _live_until(
    monitor: PipelineMonitor,
    simulator: threading.Thread,
    stop: threading.Event,
    duration_s: float | None,
    console: Console,
    title: str,
) -> None:
    deadline = None if duration_s is None else time.monotonic() + duration_s
    with Live(monitor.table(title), console=console, refresh_per_second=2) as live:
        try:
            while simulator.is_alive() and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.5)
                live.update(monitor.table(title))
        except KeyboardInterrupt:
            console.print("stopping (Ctrl-C)...")
        finally:
            stop.set()
            simulator.join(30)
            live.update(monitor.table(title))


def models_status(settings: Settings) -> str:
    """The live detector models in one line, for the demo's table: how many, and what they were trained on."""
    live = live_detector_models(settings)
    if not live:
        return "none live: verdicts from the rules only (`vigil train` fits models)"
    sources = "; ".join(sorted({str(v.metadata.get("source", "unknown source")) for v in live}))
    return f"{len(live)} live, trained on {sources}"


def ensure_diagnostic_model(settings: Settings, console: Console) -> None:
    """Train the diagnostic agent's classifier before the stack starts (about a minute, on the cores the
    pipeline will need) unless the registry already has a live one; without it the agents job diagnoses
    only what its rules decide."""

    registry = ModelRegistry.from_settings(settings)
    if registry.live_version(REGISTRY_TYPE, MODEL_NAME) is not None:
        return

    console.print(
        "training the diagnostic agent's model on a simulated, labelled fleet (once; "
        "`vigil train --agents` retrains it)..."
    )
    version = train_diagnostic(settings, registry, promote=True, console=console)
    console.print(
        f"agents/diagnostic {version.version} is live "
        f"(out-of-bag accuracy {version.metadata['metrics']['oob_accuracy']:.3f})"
    )


PLANNED_BY = "vigil demo"  # createdBy of the silences the demo sets around its own planned stop


def silence_planned_stop(settings: Settings, console: Console) -> None:
    """The demo stops its fleet (and maybe its pipeline) on purpose: silence Vigil's alerts, as an operator sets a
    maintenance silence before a planned stop, so the stop pages nobody (the sites' dead-man, the pipeline's
    staleness). The next demo ends the silence once its own fleet is reporting."""
    try:
        with AlertmanagerClient.for_settings(settings) as client:
            client.create_silence(
                ['alertname=~"Vigil.*"'],
                24 * 3600,
                comment="planned stop: vigil demo stopped its fleet; the next vigil demo ends this silence",
                created_by=PLANNED_BY,
            )
    except AlertmanagerError as exc:
        console.print(f"[yellow]could not silence the planned stop in Alertmanager ({exc}): expect pages about it")


def end_planned_stop(settings: Settings, console: Console) -> int:
    """Expire the silences a previous demo set for its stop; returns how many."""
    try:
        with AlertmanagerClient.for_settings(settings) as client:
            mine = [s for s in client.list_silences() if s.get("createdBy") == PLANNED_BY]
            for silence in mine:
                client.expire_silence(silence["id"])
            return len(mine)
    except AlertmanagerError as exc:
        console.print(
            f"[yellow]could not end the previous demo's silence in Alertmanager ({exc}); "
            f"Alertmanager's UI lists it: {settings.prometheus.alertmanager_url}/#/silences"
        )
        return 0


def run_demo(
    settings: Settings,
    machines: int,
    duration_s: float | None,
    stop_after: bool,
    console: Console,
    train_hours: float = 4.0,
) -> None:

    ensure_diagnostic_model(settings, console)
    if train_hours > 0:
        ensure_simulated_models(settings, console, hours=train_hours)
    stack = Stack(settings)
    with console.status("starting the local stack and the pipeline...") as status:
        stack.up(
            INFRA + pipeline_names(settings) + CONSOLE,
            on_started=lambda s: status.update(f"{s.name} is up (port {s.port})..."),
        )
    console.print(
        f"stack up: Kafka {settings.kafka.bootstrap_servers}, ClickHouse http://{settings.clickhouse.host}:"
        f"{settings.clickhouse.port}, Prometheus {settings.prometheus.prometheus_url}, Flink UI "
        f"http://127.0.0.1:{settings.flink.rest_port}, console http://{settings.console.host}:"
        f"{settings.console.port}\ninjected faults are labelled in {settings.ground_truth_path}\n"
        f"alerts: Alertmanager http://127.0.0.1:{settings.prometheus.alertmanager_port}, notifications the relay "
        f"sent (Slack, SMS, e-mail stand-in) in {settings.logs_dir / 'saas_standin.jsonl'}; `vigil alerts deliveries`"
    )

    announce_console(settings)
    monitor = PipelineMonitor(settings)
    monitor.models_status = models_status(settings)
    monitor.start()
    stop = threading.Event()
    simulator = start_simulator(settings, machines, duration_s, monitor, stop)
    # The previous demo's planned-stop silence ends once this fleet had the start-up grace to report again.
    unsilence = threading.Timer(settings.prometheus.startup_grace_s, end_planned_stop, (settings, console))
    unsilence.daemon = True
    unsilence.start()
    title = f"Vigil demo: {machines:,} machines (Ctrl-C to stop)"
    try:
        _live_until(monitor, simulator, stop, duration_s, console, title)
    finally:
        unsilence.cancel()
        silence_planned_stop(settings, console)
        monitor.stop()
        if stop_after:
            stopped = stack.down(CONSOLE + pipeline_names(settings))
            console.print(f"stopped {', '.join(stopped)}; servers keep running (`vigil stack down` stops them)")
        else:
            console.print("the stack keeps running: `vigil stack status`, `vigil stack down` to stop it")


def run_simulator_with_progress(
    settings: Settings, machines: int, duration_s: float | None, realtime: bool, target: str | None, console: Console
) -> None:
    monitor = PipelineMonitor(settings)
    monitor.start()
    stop = threading.Event()
    simulator = start_simulator(settings, machines, duration_s, monitor, stop, realtime=realtime, target=target)
    try:
        _live_until(monitor, simulator, stop, duration_s, console, f"simulating {machines:,} machines")
    finally:
        monitor.stop()


def print_dead_letters(settings: Settings, limit: int, timeout_s: float, console: Console) -> None:

    consumer = make_consumer(settings.kafka.as_identity("admin"), f"vigil-dlq-reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([settings.kafka.dead_letter_topic])
    shown = 0
    deadline = time.monotonic() + timeout_s
    try:
        while shown < limit and time.monotonic() < deadline:
            for message in consumer.consume(limit - shown, 1.0):
                if message.error():
                    continue
                record = orjson.loads(message.value())
                console.print(
                    f"[bold]{record.get('reason')}[/] {record.get('equipment_id') or '(no id)'} "
                    f"from {record.get('source')}: {record.get('detail')}"
                )
                shown += 1
    finally:
        consumer.close()
    if not shown:
        console.print(f"no dead letters in {settings.kafka.dead_letter_topic} (read for {timeout_s:.0f}s)")
