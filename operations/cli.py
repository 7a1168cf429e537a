"""The `vigil` command: local stack, demo, simulator, Flink jobs and benchmarks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectors.clickhouse import vigil_tables
from connectors.clickhouse_access import password_sha256, render_access_sql
from edge.tls import tls_files
from jobs.registry import FLINK_JOBS
from onnx_models.history import DEFAULT_HISTORY
from operations.alerts_cli import alerts_app
from operations.bench.alerts import run_alerts_bench
from operations.bench.console import results_tables, run_console_bench, write_json
from operations.bench.latency import run_latency_bench
from operations.bench.throughput import run_throughput_bench
from operations.certs import describe, ensure_local_certs, issue
from operations.chaos import DEFAULT_FAULTS, run_chaos
from operations.chaos import results_table as chaos_table
from operations.console_cli import console_app
from operations.demo import print_dead_letters, run_demo, run_simulator_with_progress
from operations.evaluate.agents_eval import AgentRunOptions, evaluate_agents, evaluation_dict, print_agent_evaluation
from operations.evaluate.agents_skab import evaluate_skab_agents, print_skab_report, report_dict
from operations.evaluate.nab_eval import (
    DEFAULT_DETECTOR,
    nab_scorecard,
    parse_params,
    show_published_check,
    show_rescored_results,
)
from operations.evaluate.sim import SimOptions, evaluate_sim, print_sim_result, summary_dict
from operations.evaluate.skab import run_skab_scorecards
from operations.evaluate.vus_eval import run_vus
from operations.fuzz import TARGETS as FUZZ_TARGETS
from operations.fuzz import default_work_dir as default_fuzz_dir
from operations.fuzz import run_target as run_fuzz_target
from operations.replay import FORMATS, run_replay
from operations.stack.flink_cluster import start_cluster, stop_cluster, submit
from operations.stack.services import INFRA, Stack, pipeline_names
from operations.training.cli import labels_app, models_app, train_command
from vigil.logs import setup_logging
from vigil.settings import PROJECT_ROOT, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
stack_app = typer.Typer(no_args_is_help=True, help="Start, stop and inspect the local servers.")
job_app = typer.Typer(no_args_is_help=True, help="Run Flink jobs (in-process or on a standalone cluster).")
cluster_app = typer.Typer(no_args_is_help=True, help="The standalone Flink cluster (start-cluster.sh).")
certs_app = typer.Typer(no_args_is_help=True, help="The local CA and the edge's and gateways' certificates (mTLS).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures (see docs/benchmarks.md).")
app.add_typer(stack_app, name="stack")
app.add_typer(job_app, name="job")
app.add_typer(cluster_app, name="cluster")
app.add_typer(bench_app, name="bench")
app.add_typer(certs_app, name="certs")
app.add_typer(console_app, name="console")
app.add_typer(models_app, name="models", help="The model registry: list, promote, roll back.")
app.add_typer(alerts_app, name="alerts")
app.add_typer(labels_app, name="labels")
app.command("train")(train_command)
console = Console()


def _with_samples(samples_per_sensor: int | None, fault_rate: float | None = None):
    """Settings with the simulator's load and fault rate overridden (None keeps the setting)."""
    settings = get_settings()
    update: dict[str, object] = {}
    if samples_per_sensor is not None:
        update["samples_per_sensor"] = samples_per_sensor
    if fault_rate is not None:
        update["fault_rate_per_machine_hour"] = fault_rate
    if not update:
        return settings
    return settings.model_copy(update={"simulator": settings.simulator.model_copy(update=update)})


FaultRateOption = Annotated[
    float | None,
    typer.Option(help="random labelled faults per machine-hour (ground truth: <data_dir>/ground_truth.jsonl)"),
]
SamplesOption = Annotated[
    int | None,
    typer.Option(
        help="samples per sensor in each 5-s batch (default from settings: 70 = the design "
        "load of ~100K points/s per 1,000 machines; 10 = 2 Hz)"
    ),
]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _status_table(statuses) -> Table:
    table = Table(title="Vigil local stack")
    for column in ("service", "port", "pid", "state", "what"):
        table.add_column(column)
    for status in statuses:
        if status.healthy:
            state = "[green]healthy[/]"
        elif status.running:
            state = "[yellow]running, not healthy[/]"
        else:
            state = "[dim]stopped[/]"
        port = str(status.port) if status.port else "-"
        what = status.description + (f" ({status.detail})" if status.detail else "")
        table.add_row(status.name, port, str(status.pid or "-"), state, what)
    return table


@stack_app.command("up")
def stack_up(
    pipeline: Annotated[bool, typer.Option(help="also start the edge service, Flink job and sinks")] = False,
) -> None:
    """Start every local server (idempotent: running ones are left alone)."""

    stack = Stack(get_settings())
    names = INFRA + (pipeline_names(get_settings()) if pipeline else ())
    try:
        with console.status("starting the local stack...") as status:
            stack.up(names, on_started=lambda s: status.update(f"{s.name} is up on port {s.port}..."))
    except Exception as exc:
        _fail(str(exc))
    console.print(_status_table(stack.status()))


@stack_app.command("down")
def stack_down() -> None:
    """Stop every process the stack started."""

    stopped = Stack(get_settings()).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status() -> None:
    """Report each server with its port, pid and health."""

    console.print(_status_table(Stack(get_settings()).status()))


@certs_app.command("init")
def certs_init(
    renew: Annotated[
        bool, typer.Option(help="re-issue the edge's, the local gateway's and the monitoring servers' certificates")
    ] = False,
    new_ca: Annotated[
        bool, typer.Option(help="a new CA as well: every certificate the old one signed stops working")
    ] = False,
) -> None:
    """Create what is missing of the local CA and the certificates of the edge, the local gateway and the
    monitoring servers (Prometheus, Alertmanager, Pushgateway; `vigil stack up` does it too). After --renew or
    --new-ca, restart the stack: servers read them at start."""
    settings = get_settings()
    made = ensure_local_certs(settings, renew=renew or new_ca, new_ca=new_ca)
    for issued in made:
        console.print(f"created {issued.cert} ({issued.common_name}, valid until {issued.not_after:%Y-%m-%d})")
    if not made:
        console.print(f"nothing to do: {settings.certs_dir} has the CA and certificates (`vigil certs show`)")


@certs_app.command("issue")
def certs_issue(
    gateway: Annotated[str, typer.Argument(help="the gateway's identity, the certificate's common name")],
    out: Annotated[Path, typer.Option(help="folder for <gateway>.pem and <gateway>-key.pem")] = Path("."),
) -> None:
    """A gateway certificate signed by the local CA: the gateway sets VIGIL_EDGE__GATEWAY_CERT_FILE and
    VIGIL_EDGE__GATEWAY_KEY_FILE to it, and the equipment registry's gateway_id column names it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", gateway):
        _fail(f"{gateway!r} is not a usable gateway name: letters, digits and _.:- (at most 64)")
    try:
        issued = issue(get_settings(), gateway, out / f"{gateway}.pem", out / f"{gateway}-key.pem")
    except RuntimeError as exc:
        _fail(str(exc))
    console.print(f"created {issued.cert} and {issued.key} (valid until {issued.not_after:%Y-%m-%d})")


@certs_app.command("show")
def certs_show() -> None:
    """The certificates in use, who signed them and when they expire."""
    settings = get_settings()
    files = tls_files(settings)
    for path in dict.fromkeys(
        (files.ca, files.edge_cert, files.gateway_cert, settings.monitoring_ca_path, settings.monitoring_cert_path)
    ):
        console.print(describe(path) if path.exists() else f"{path}: missing (`vigil certs init`)")


@stack_app.command("access-sql")
def stack_access_sql(
    sites: Annotated[list[str], typer.Option("--site", help="a site to create a role and row policies for")],
) -> None:
    """Print the ClickHouse users, profiles, grants, site roles and row policies for a real cluster
    (docs/security.md): the identities the local server enforces, with the password files' SHA-256."""

    ch = get_settings().clickhouse
    try:
        hashes = {name: password_sha256(ch.password_file(name).read_text().strip()) for name in ch.users}
    except FileNotFoundError as exc:
        _fail(f"{exc}: write each identity's password file first (or start the local stack once)")
    for statement in render_access_sql(vigil_tables(ch), ch.users, hashes, sites):
        typer.echo(statement + ";")


@app.command()
def demo(
    machines: Annotated[int, typer.Option(help="simulated machines")] = 1000,
    duration: Annotated[float | None, typer.Option(help="seconds to run (default: until Ctrl-C)")] = None,
    stop_after: Annotated[bool, typer.Option(help="stop the pipeline processes when the demo ends")] = False,
    samples_per_sensor: SamplesOption = None,
    fault_rate: FaultRateOption = None,
    train_hours: Annotated[
        float,
        typer.Option(
            help="hours of simulated history the detectors train on before the fleet starts (skipped when "
            "live models fit the fleet's layout; 0: keep whatever is live, rules only if nothing is)"
        ),
    ] = 4.0,
) -> None:
    """Start the stack and pipeline, stream a simulated fleet through it, and show live figures."""

    try:
        run_demo(
            _with_samples(samples_per_sensor, fault_rate),
            machines=machines,
            duration_s=duration,
            stop_after=stop_after,
            console=console,
            train_hours=train_hours,
        )
    except RuntimeError as exc:
        _fail(str(exc))


@app.command()
def simulate(
    machines: Annotated[int, typer.Option(help="simulated machines")] = 1000,
    duration: Annotated[float | None, typer.Option(help="seconds to run (default: until Ctrl-C)")] = None,
    fast: Annotated[bool, typer.Option(help="generate consecutive ticks as fast as possible")] = False,
    target: Annotated[str | None, typer.Option(help="edge service host:port (default from settings)")] = None,
    samples_per_sensor: SamplesOption = None,
    fault_rate: FaultRateOption = None,
) -> None:
    """Stream a simulated fleet to the edge service through gateway clients."""

    run_simulator_with_progress(
        _with_samples(samples_per_sensor, fault_rate),
        machines,
        duration,
        realtime=not fast,
        target=target,
        console=console,
    )


@job_app.command("submit")
def job_submit(
    job: Annotated[str, typer.Argument(help=" | ".join(FLINK_JOBS))] = "window-stats",
    target: Annotated[str, typer.Option(help="local (in-process PyFlink) or cluster (flink run)")] = "local",
    detach: Annotated[bool, typer.Option(help="return once submitted (cluster) / run in background (local)")] = False,
    resume: Annotated[bool, typer.Option(help="resume from the newest retained checkpoint")] = True,
) -> None:
    """Run a Flink job in-process (local mode) or submit it with `flink run` to the standalone cluster."""

    if job not in FLINK_JOBS:
        _fail(f"unknown job {job!r}; known jobs: {', '.join(FLINK_JOBS)}")
    if target not in ("local", "cluster"):
        _fail("--target must be 'local' or 'cluster'")
    setup_logging()
    try:
        code = submit(get_settings(), job, target=target, detach=detach, resume=resume)
    except RuntimeError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@cluster_app.command("start")
def cluster_start() -> None:
    """Start a standalone Flink cluster (JobManager + TaskManager) with flink-conf/cluster."""

    try:
        url = start_cluster(get_settings())
    except RuntimeError as exc:
        _fail(str(exc))
    console.print(f"Flink cluster up: {url}")


@cluster_app.command("stop")
def cluster_stop() -> None:
    """Stop the standalone Flink cluster."""

    stop_cluster(get_settings())
    console.print("Flink cluster stopped")


@bench_app.command("throughput")
def bench_throughput(
    machines: Annotated[list[int], typer.Option(help="fleet sizes to measure")] = [1000, 2000],  # noqa: B006
    duration: Annotated[float, typer.Option(help="seconds of steady streaming per fleet size")] = 60.0,
    output: Annotated[Path | None, typer.Option(help="also write the figures as JSON here")] = None,
    samples_per_sensor: SamplesOption = None,
    scoring: Annotated[
        str,
        typer.Option(
            help="anomaly-scoring job: on (models trained on the warm-up), off, or both (one run each, for comparison)"
        ),
    ] = "on",
) -> None:
    """Sustained points/s from gRPC ingest to rows in ClickHouse, verdicts/s, latency and peak memory."""

    modes = {"on": (True,), "off": (False,), "both": (False, True)}
    if scoring not in modes:
        _fail(f"--scoring must be on, off or both, not {scoring!r}")
    run_throughput_bench(_with_samples(samples_per_sensor), machines, duration, output, console, modes[scoring])


@bench_app.command("console")
def bench_console(
    machines: Annotated[int, typer.Option(help="machines whose data the console shows")] = 10_000,
    minutes: Annotated[int, typer.Option(help="minutes of 5-s windows to seed per machine")] = 30,
    repeats: Annotated[int, typer.Option(help="runs of each query (median and max are shown)")] = 5,
    browser: Annotated[bool, typer.Option(help="also time Fleet and Equipment in headless Chromium")] = True,
    output: Annotated[Path | None, typer.Option(help="also write the figures as JSON here")] = None,
    reuse: Annotated[bool, typer.Option(help="keep an already seeded bench database of the same size")] = False,
) -> None:
    """Console pages and their ClickHouse queries at fleet scale (a dedicated, seeded database)."""

    result = run_console_bench(get_settings(), machines, minutes, repeats, browser, console, reuse)
    for table in results_tables(result):
        console.print(table)
    if output:
        write_json(result, output)
        console.print(f"figures written to {output}")


@bench_app.command("latency")
def bench_latency(
    machines: Annotated[int, typer.Option(help="simulated machines streaming during the run")] = 1000,
    faults: Annotated[int, typer.Option(help="faults to inject, each on its own machine")] = 60,
    spacing: Annotated[
        float, typer.Option(help="seconds between fault slots (each starts at a random instant of its slot)")
    ] = 5.0,
    fault_duration: Annotated[float, typer.Option(help="seconds each fault lasts")] = 40.0,
    warmup: Annotated[
        float,
        typer.Option(
            help="seconds of streaming before the first fault (the jobs reach steady state in about a minute)"
        ),
    ] = 90.0,
    tail: Annotated[float, typer.Option(help="seconds to wait after the last fault ends")] = 20.0,
    topology: Annotated[
        str, typer.Option(help="Flink jobs: combined (windows and scoring in one job) or split")
    ] = "combined",
    samples_per_sensor: SamplesOption = None,
    output: Annotated[Path | None, typer.Option(help="also write every fault's timings as JSON here")] = None,
    kill: Annotated[
        list[str] | None,
        typer.Option(help="services to SIGKILL during the faults, evenly spaced (e.g. alert-publisher notify-relay)"),
    ] = None,
    down: Annotated[float, typer.Option(help="seconds each killed service stays dead")] = 10.0,
) -> None:
    """Injected fault -> Slack and SMS request at the (stand-in) receiver: p50/p95/p99 by stage, duplicates."""

    if topology not in ("combined", "split"):
        _fail(f"--topology must be combined or split, not {topology!r}")
    try:
        run_latency_bench(
            _with_samples(samples_per_sensor),
            machines,
            faults,
            spacing,
            fault_duration,
            warmup,
            tail,
            topology,
            output,
            console,
            kills=kill,
            down_s=down,
        )
    except (RuntimeError, ValueError) as exc:
        _fail(str(exc))


@bench_app.command("alerts")
def bench_alerts(
    machines: Annotated[int, typer.Option(help="simulated machines streaming during the run")] = 1000,
    minutes: Annotated[float, typer.Option(help="minutes of live streaming scored (after a 2-minute start-up)")] = 30.0,
    fault_rate: Annotated[
        float, typer.Option(help="random labelled faults per machine-hour (the simulator's mix of fault types)")
    ] = 0.05,
    topology: Annotated[
        str, typer.Option(help="Flink jobs: combined (windows and scoring in one job) or split")
    ] = "combined",
    samples_per_sensor: SamplesOption = None,
    train_hours: Annotated[
        float,
        typer.Option(help="hours of simulated history the models train on first (0: use the live models as they are)"),
    ] = 4.0,
    output: Annotated[Path | None, typer.Option(help="also write the figures as JSON here")] = None,
) -> None:
    """What on-call people receive from a live fleet: false and true pages per 1,000 machine-hours, faults paged,
    delay, notifications per site and 10 minutes, floods, chattering; from what the Slack stand-in received."""

    if topology not in ("combined", "split"):
        _fail(f"--topology must be combined or split, not {topology!r}")
    try:
        run_alerts_bench(
            _with_samples(samples_per_sensor),
            machines,
            minutes,
            fault_rate,
            topology,
            output,
            console,
            train_hours=train_hours,
        )
    except (RuntimeError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def replay(
    files: Annotated[list[Path], typer.Argument(help="labelled recordings, one machine each (e.g. skab/valve1/*.csv)")],
    fmt: Annotated[
        str, typer.Option("--format", help="skab (';'-separated, anomaly column) or nab (timestamp,value)")
    ] = ("skab"),
    history: Annotated[
        Path | None,
        typer.Option(
            help="a recording of normal operation to train the type's models on first (e.g. anomaly-free.csv)"
        ),
    ] = None,
    history_machines: Annotated[int, typer.Option(help="machines the history is split across (hours in minutes)")] = 8,
    history_rows: Annotated[
        int,
        typer.Option(
            help="instead of --history: train on each file's first N normal rows (SKAB's protocol), then "
            "replay the rest"
        ),
    ] = 0,
    equipment_type: Annotated[
        str | None, typer.Option(help="the machines' equipment type (default: <format>_replay)")
    ] = (None),
    windows: Annotated[Path | None, typer.Option(help="NAB: the anomaly windows file (combined_windows.json)")] = None,
    speed: Annotated[float, typer.Option(help="1: the data's own pace; N: N times faster (times compressed)")] = 1.0,
    output: Annotated[Path | None, typer.Option(help="also write the figures as JSON here")] = None,
) -> None:
    """Stream labelled recordings through the live stack as machines of their own, with event times shifted to now,
    and count the pages the Slack stand-in received against their labels (docs/detection.md)."""
    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    missing = [str(p) for p in [*files, *([history] if history else [])] if not p.is_file()]
    if missing:
        _fail(f"no such file: {', '.join(missing)}")
    try:
        run_replay(
            get_settings(),
            files,
            fmt,
            console,
            history=history,
            history_machines=history_machines,
            history_rows=history_rows,
            equipment_type=equipment_type,
            windows_file=windows,
            speed=speed,
            output=output,
        )
    except (RuntimeError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def chaos(
    machines: Annotated[int, typer.Option(help="simulated machines streaming through the faults")] = 200,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="faults in order, NAME or NAME:SECONDS: a service to SIGKILL, edge-kafka-blackhole, "
            "clickhouse-refuses-writes, gateway-clock-skew or kafka-disk-full (root, fresh data dir) "
            f"(default: all of {', '.join(DEFAULT_FAULTS)})"
        ),
    ] = None,
    down: Annotated[float, typer.Option(help="seconds a fault lasts unless NAME:SECONDS says (refusals: 60)")] = 10.0,
    settle: Annotated[float, typer.Option(help="seconds of steady streaming after each recovery")] = 30.0,
    output: Annotated[Path | None, typer.Option(help="also write the figures as JSON here")] = None,
    samples_per_sensor: SamplesOption = None,
    gateways: Annotated[
        int | None, typer.Option(help="gateways: gRPC streams, each with its own disk buffer (simulator.streams)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for a recovery, and for buffers to drain")] = 240.0,
) -> None:
    """Break each part of the pipeline under load, heal it, and count lost/duplicated windows and verdicts."""
    try:
        settings = _with_samples(samples_per_sensor, 0.0)
        result = run_chaos(
            settings,
            machines,
            fault or DEFAULT_FAULTS,
            console,
            down_s=down,
            settle_s=settle,
            recovery_timeout_s=timeout,
            streams=gateways,
        )
    except (RuntimeError, ValueError) as exc:
        _fail(str(exc))
    console.print(chaos_table(result))
    console.print(f"dead letters of the run by reason: {result.dead_letters or 'none'}")
    console.print(f"gateway batches buffered on disk: {result.gateway_buffered}, replayed: {result.gateway_replayed}")
    _write_json(output, result.as_dict(), "chaos figures")


@app.command()
def fuzz(
    target: Annotated[
        list[str] | None, typer.Option(help=f"what to fuzz (default: all of {', '.join(FUZZ_TARGETS)})")
    ] = None,
    seconds: Annotated[float, typer.Option(help="seconds per target")] = 120.0,
    work_dir: Annotated[Path | None, typer.Option(help="corpus, logs and crash inputs (default: a temp dir)")] = None,
    output: Annotated[Path | None, typer.Option(help="also write the figures as JSON here")] = None,
) -> None:
    """Coverage-guided fuzzing (atheris) of the edge's decoding and validation and of the relay's webhook and
    messages: executions, coverage and crashes per target; a crash input is kept to replay (tests/fuzz_corpus)."""
    names = target or list(FUZZ_TARGETS)
    unknown = [n for n in names if n not in FUZZ_TARGETS]
    if unknown:
        _fail(f"unknown fuzz target(s) {unknown}: choose from {', '.join(FUZZ_TARGETS)}")
    where = work_dir or default_fuzz_dir()
    results = []
    for name in names:
        console.print(f"fuzzing {name} for {seconds:.0f} s (log: {where / (name + '.log')}) ...")
        results.append(run_fuzz_target(name, seconds, where))
    table = Table("target", "seconds", "executions", "exec/s", "coverage (edges)", "new inputs", "crashes")
    for r in results:
        rate = r.executions / r.seconds if r.seconds else 0
        table.add_row(
            r.target,
            f"{r.seconds:.0f}",
            f"{r.executions:,}",
            f"{rate:,.0f}",
            str(r.coverage),
            str(r.corpus),
            str(len(r.crashes)),
        )
    console.print(table)
    for r in results:
        for crash in r.crashes:
            console.print(
                f"[bold red]crash[/] in {r.target}: {crash} (replay: python -m operations.fuzz {r.target} {crash})"
            )
    _write_json(
        output,
        [
            {
                "target": r.target,
                "seconds": r.seconds,
                "executions": r.executions,
                "coverage": r.coverage,
                "new_inputs": r.corpus,
                "crashes": [str(c) for c in r.crashes],
            }
            for r in results
        ],
        "fuzz figures",
    )
    if any(r.crashes for r in results):
        raise typer.Exit(1)


def _write_json(output: Path | None, data: object, what: str) -> None:
    """``data`` as indented JSON at ``output`` (when given), saying where it went."""
    if output is None:
        return

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2, default=str))
    console.print(f"{what} written to {output}")


def _evaluation_error(exc: Exception) -> None:
    """Fail with an evaluation's error message (a KeyError's without the quotes its str() adds)."""
    _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))


@app.command()
def evaluate(
    dataset: Annotated[str | None, typer.Option(help="skab, nab or sim")] = None,
    vus: Annotated[
        bool,
        typer.Option(
            "--vus",
            help="skab/nab: TSB-AD's VUS-PR and VUS-ROC of each --detector (default: all of the dataset's) "
            "at the evaluators' default settings, instead of the scorecard",
        ),
    ] = False,
    agents: Annotated[
        bool,
        typer.Option(
            "--agents",
            help="score the diagnostic, root-cause and maintenance agents "
            "on simulated fleets (the diagnostic model is trained on another run)",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="folder in the benchmark's format (default: ../shared/data/<dataset>)")
    ] = None,
    detector: Annotated[
        list[str] | None,
        typer.Option(
            help="detector name; skab: repeat for several (default: every skab detector), "
            f"nab: one (default: {DEFAULT_DETECTOR})"
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="nab: alarm when the score exceeds this, fixed in advance (default: the detector's own "
            "default_threshold; 4.0 for a detector without one, e.g. ewma_zscore)"
        ),
    ] = None,
    rearm_rows: Annotated[int, typer.Option(help="nab: suppress repeat alarms within this many rows")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option(metavar="K=V", help="nab: detector parameter, e.g. --param alpha=0.003 (repeatable)"),
    ] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize", help="nab: per-file min-max scores to [0,1] (not causal)")
    ] = False,
    rescore: Annotated[
        Path | None,
        typer.Option(
            metavar="RESULTS_DIR",
            help="nab: score result files written by --results-dir against --data-dir with their "
            "thresholds.json, instead of running a detector",
        ),
    ] = None,
    check_nab: Annotated[
        Path | None,
        typer.Option(
            metavar="NAB_ROOT",
            help="nab: re-score the results NAB ships (a checkout of numenta/NAB) to check the scorer",
        ),
    ] = None,
    check_detector: Annotated[
        str, typer.Option(help="nab --check-nab: the NAB detector whose shipped results are re-scored")
    ] = "windowedGaussian",
    target_far: Annotated[
        float,
        typer.Option(
            help="skab, limit anomaly-free (--protocol vigil): false-alarm rate the alarm level is set for "
            "on anomaly-free data (labels unused)"
        ),
    ] = 0.10,
    protocol: Annotated[
        str,
        typer.Option(
            help="skab: 'skab' (SKAB's leaderboard protocol: first 400 rows of each "
            "file fit, rest scored) or 'vigil' (ours, reported apart)"
        ),
    ] = "skab",
    limit: Annotated[
        str | None,
        typer.Option(
            help="skab: how the alarm level is set: train-quantile (factor x quantile of each file's training "
            "scores; default for --protocol skab), spc (T2/Q control limits, pca_t2q), or anomaly-free "
            "(tuned on anomaly-free data; --protocol vigil only, its default)"
        ),
    ] = None,
    history: Annotated[
        int, typer.Option(help="skab: rows of causal history in the features (rolling mean/std window)")
    ] = DEFAULT_HISTORY,
    train_rows: Annotated[int, typer.Option(help="skab: leading rows of each file to fit on")] = 400,
    alarm_level: Annotated[
        float | None,
        typer.Option(help="skab, limit anomaly-free: fixed alarm level instead of tuning it on anomaly-free data"),
    ] = None,
    ucl_quantile: Annotated[
        float, typer.Option(help="skab, limit train-quantile: quantile of the training scores")
    ] = 0.99,
    ucl_factor: Annotated[float, typer.Option(help="skab, limit train-quantile: factor on that quantile")] = 2.5,
    alpha: Annotated[float, typer.Option(help="skab, limit spc: false-alarm probability of each limit")] = 0.001,
    median_window: Annotated[
        int,
        typer.Option(help="skab: causal rolling median of the score over this many rows (1 = off; SKAB's T2+Q uses 5)"),
    ] = 1,
    run_length: Annotated[
        int, typer.Option(help="skab: alarm only after this many consecutive rows above the limit (1 = off)")
    ] = 1,
    pca_variance: Annotated[
        float | None,
        typer.Option(help="skab: explained variance pca_t2q keeps (default 0.99; SKAB's T2+Q baseline keeps 0.85)"),
    ] = None,
    results_dir: Annotated[
        Path | None,
        typer.Option(
            help="skab/nab: also write result files in the benchmark's own format here, with the threshold used "
            "(skab: one --detector only)"
        ),
    ] = None,
    results_name: Annotated[
        str, typer.Option(help="nab: detector name in the result files and --rescore (no '_')")
    ] = "vigil",
    machines: Annotated[int, typer.Option(help="sim: simulated machines (types rotate)", min=1)] = 60,
    minutes: Annotated[
        float, typer.Option(help="sim: simulated minutes (the first 40 % train the models)", min=1.0)
    ] = 120.0,
    seed: Annotated[int, typer.Option(help="sim: simulator seed (--agents: 7 means the agents' default, 303)")] = 7,
    fault_rate: FaultRateOption = None,
    samples_per_sensor: SamplesOption = None,
    output: Annotated[Path | None, typer.Option(help="sim: also write the scorecard as JSON here")] = None,
) -> None:
    """Score the detectors on a labelled benchmark with the benchmark's own metrics.

    skab / nab: any folder in the benchmark's format (operations/evaluate/skab.py, nab_eval.py).
    sim: a simulated fleet with labelled faults, scored offline by the streaming job's own rules and scorer.
    """

    if agents and dataset == "skab":
        folder = data_dir or PROJECT_ROOT.parent / "shared" / "data" / "skab"
        if not folder.is_dir():
            _fail(f"no data folder {folder}: pass --data-dir with a folder in SKAB's format")
        try:
            report = evaluate_skab_agents(get_settings(), folder, console)
        except (ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
        print_skab_report(report, console)
        _write_json(output, report_dict(report), "SKAB agent report")
        return
    if agents:
        run = AgentRunOptions(
            machines=machines,
            duration_s=minutes * 60.0,
            seed=303 if seed == 7 else seed,
            fault_rate=fault_rate if fault_rate is not None else AgentRunOptions.fault_rate,
        )
        result = evaluate_agents(get_settings(), run, console)
        print_agent_evaluation(result, console)
        _write_json(output, evaluation_dict(result), "agent scorecard")
        return
    if check_nab is not None:
        if dataset not in (None, "nab"):
            _fail("--check-nab re-scores NAB's shipped results: use it with --dataset nab")
        try:
            show_published_check(check_nab, check_detector, console)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            _evaluation_error(exc)
        return
    if dataset is None:
        _fail("pass --dataset skab|nab|sim, or --agents")
    if dataset == "sim":
        options = SimOptions(
            machines=machines,
            duration_s=minutes * 60.0,
            seed=seed,
            fault_rate=fault_rate,
            samples_per_sensor=samples_per_sensor,
        )
        result = evaluate_sim(get_settings(), options, console)
        print_sim_result(result, console)
        _write_json(output, summary_dict(result), "scorecard")
        return
    folder = data_dir or PROJECT_ROOT.parent / "shared" / "data" / dataset
    if not folder.is_dir():
        _fail(f"no data folder {folder}: pass --data-dir with a folder in {dataset.upper()}'s format")
    if dataset not in ("skab", "nab"):
        _fail("--dataset must be skab, nab or sim")
    if dataset == "nab" and detector and len(detector) > 1:
        _fail("--dataset nab scores one --detector at a time")
    try:
        if vus:
            run_vus(dataset, folder, detector or None, console)
        elif dataset == "skab":
            run_skab_scorecards(
                folder,
                detector,
                protocol=protocol,
                limit=limit,
                target_far=target_far,
                ucl_quantile=ucl_quantile,
                ucl_factor=ucl_factor,
                alpha=alpha,
                median_window=median_window,
                run_length=run_length,
                history=history,
                train_rows=train_rows,
                alarm_level=alarm_level,
                pca_variance=pca_variance,
                results_dir=results_dir,
                console=console,
            )
        elif rescore is not None:
            show_rescored_results(folder, rescore, results_name, console)
        else:
            nab_scorecard(
                folder,
                detector[0] if detector else DEFAULT_DETECTOR,
                threshold,
                normalize=normalize,
                rearm_rows=rearm_rows,
                params=parse_params(param or []),
                results_dir=results_dir,
                results_name=results_name,
                console=console,
            )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _evaluation_error(exc)


@app.command("dead-letters")
def dead_letters(
    limit: Annotated[int, typer.Option(help="how many records to show")] = 20,
    timeout: Annotated[float, typer.Option(help="seconds to read")] = 10.0,
) -> None:
    """Show records from the dead-letter topic with their reasons."""

    print_dead_letters(get_settings(), limit, timeout, console)


if __name__ == "__main__":
    app()
