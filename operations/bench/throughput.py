"""`vigil bench throughput`: the pipeline's sustained rate, latency and memory, measured end to end.

For each fleet size: start the stack and pipeline, stream the simulated fleet in real time for a
warm-up and then a measured interval, and read the figures from where they really land:
- points/s in: batches the edge service acknowledged (after Kafka acks), from the simulator's acks;
- points/s out: the sum of ``count`` over window rows that became visible in ClickHouse during the
  interval (``inserted_at`` is set by the server at insert);
- latency: window emitted by Flink -> row visible in ClickHouse, and window end -> visible;
- peak RSS and mean CPU of every process of the stack (the Flink job includes its JVM).
"""

from __future__ import annotations

import json
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.live import Live
from rich.table import Table

from connectors.clickhouse import make_client
from edge.simulator import runner
from operations.demo import _sender_factory
from operations.monitor import PipelineMonitor
from operations.stack.services import INFRA, PIPELINE, Stack, pipeline_names
from operations.training.detectors import train
from vigil.settings import Settings

WARMUP_S = 30.0


@dataclass
class ProcessUsage:
    peak_rss_mb: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class BenchResult:
    machines: int
    duration_s: float
    points_in_per_s: float
    batches_acked: int
    send_errors: int
    window_rows: int
    points_out_per_s: float
    emitted_to_visible_p50_s: float | None
    emitted_to_visible_p99_s: float | None
    window_end_to_visible_p50_s: float | None
    window_end_to_visible_p99_s: float | None
    processes: dict[str, ProcessUsage] = field(default_factory=dict)
    scoring: bool = False
    verdicts_per_s: float = 0.0  # (machine, window) verdicts visible in ClickHouse per second
    verdicts_model_scored: float = 0.0  # fraction of window verdicts that carry ONNX model scores
    verdict_window_end_to_visible_p50_s: float | None = None
    verdict_window_end_to_visible_p99_s: float | None = None


class UsageSampler:
    """Peak RSS and CPU time of each stack process (with children, e.g. the job's JVM)."""

    def __init__(self, pids: dict[str, int], alone: frozenset[str] = frozenset()) -> None:
        self.pids = pids
        self.alone = alone  # measured without children (the bench process is the stack's parent)
        self.usage = {name: ProcessUsage() for name in pids}
        self._start_cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            if pid in {self.pids[name] for name in self.alone}:
                return [root]
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _cpu(self, procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    def start(self) -> None:
        self._start_cpu = {name: self._cpu(self._tree(pid)) for name, pid in self.pids.items()}
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name, pid in self.pids.items():
                rss = 0
                for proc in self._tree(pid):
                    try:
                        rss += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
                usage = self.usage[name]
                usage.peak_rss_mb = max(usage.peak_rss_mb, rss / 2**20)

    def stop(self) -> dict[str, ProcessUsage]:
        self._stop.set()
        self._thread.join(5)
        for name, pid in self.pids.items():
            self.usage[name].cpu_seconds = self._cpu(self._tree(pid)) - self._start_cpu.get(name, 0.0)
        return self.usage


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def _train_on_warmup(settings: Settings, since: datetime, console: Console) -> None:
    """Fit and promote every detector on the warm-up's windows, so the measured run scores with models."""

    versions = train(settings, since=since, until=datetime.now(UTC), promote=True, console=console)
    console.print(
        f"trained and promoted {len(versions)} models; the scoring job swaps them in within "
        f"{settings.scoring.model_poll_s:.0f} s"
    )


def measure(
    settings: Settings,
    machines: int,
    duration_s: float,
    console: Console,
    scoring: bool = True,
    warmup_s: float = WARMUP_S,
) -> BenchResult:

    stack = Stack(settings)
    # Without scoring, the window-stats job of the split topology runs alone.
    pipeline = pipeline_names(settings) if scoring else tuple(n for n in PIPELINE if n != "anomaly-scoring-job")
    stack.down(tuple({"anomaly-scoring-job", "fleet-pipeline-job", "window-stats-job"} - set(pipeline)))
    stack.up(INFRA + pipeline)
    pids = {s.name: s.pid for s in stack.status() if s.pid}
    monitor = PipelineMonitor(settings)
    monitor.start()
    stop = threading.Event()
    acked = {"batches": 0, "points": 0, "errors": 0}
    measuring = threading.Event()

    def on_tick(stats: runner.TickStats) -> None:
        monitor.record_sent(stats.batches, stats.points, errors=stats.send_errors)
        if measuring.is_set():
            acked["batches"] += stats.accepted_batches
            acked["points"] += stats.points * (stats.accepted_batches / stats.batches if stats.batches else 0)
            acked["errors"] += stats.send_errors

    simulator = threading.Thread(
        target=runner.run_simulation,
        kwargs=dict(
            settings=settings,
            machines=machines,
            duration_s=None,
            realtime=True,
            on_tick=on_tick,
            stop=stop,
            make_sender=_make_sender(settings),
        ),
        daemon=True,
    )
    simulator.start()
    bench = "simulator + gateway clients (bench process)"
    sampler = UsageSampler(pids | {bench: psutil.Process().pid}, alone=frozenset({bench}))
    title = f"bench: {machines:,} machines, scoring {'on' if scoring else 'off'}"
    warmup_from = datetime.now(UTC)
    if scoring:  # the models train on the warm-up's windows: give every type a few dozen of them
        warmup_s = max(warmup_s, 60.0)
    with Live(monitor.table(title), console=console, refresh_per_second=1) as live:
        end_warmup = time.monotonic() + warmup_s
        while time.monotonic() < end_warmup:
            time.sleep(1)
            live.update(monitor.table(f"{title} (warm-up)"))
        if scoring:
            live.stop()
            _train_on_warmup(settings, warmup_from, console)
            time.sleep(settings.scoring.model_poll_s + 2 * settings.window.size_ms / 1000)
            live.start()
        sampler.start()
        measuring.set()
        t0 = datetime.now(UTC)
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            time.sleep(1)
            live.update(monitor.table(f"{title} (measuring)"))
        measuring.clear()
        t1 = datetime.now(UTC)
    usage = sampler.stop()
    stop.set()
    simulator.join(30)
    monitor.stop()
    client = make_client(settings.clickhouse, "admin")
    frame = client.query_df(
        "SELECT count, toUnixTimestamp64Milli(inserted_at) AS ins, toUnixTimestamp64Milli(emitted_at) AS emi, "
        "toUnixTimestamp64Milli(window_end) AS wend FROM window_stats "
        "WHERE inserted_at >= {t0:DateTime64(3)} AND inserted_at < {t1:DateTime64(3)}",
        parameters={"t0": t0, "t1": t1},
    )
    wall = (t1 - t0).total_seconds()
    emitted = (frame.ins - frame.emi).to_numpy() / 1000 if len(frame) else np.array([])
    ended = (frame.ins - frame.wend).to_numpy() / 1000 if len(frame) else np.array([])
    verdicts = (
        client.query_df(
            "SELECT toUnixTimestamp64Milli(inserted_at) AS ins, toUnixTimestamp64Milli(window_end) AS wend, "
            "notEmpty(arrayFilter(k -> k != 'rules', mapKeys(scores))) AS scored FROM anomalies "
            "WHERE kind = 'window' AND inserted_at >= {t0:DateTime64(3)} AND inserted_at < {t1:DateTime64(3)}",
            parameters={"t0": t0, "t1": t1},
        )
        if scoring
        else None
    )
    verdict_lag = (verdicts.ins - verdicts.wend).to_numpy() / 1000 if verdicts is not None and len(verdicts) else None
    return BenchResult(
        machines=machines,
        duration_s=round(wall, 1),
        points_in_per_s=round(acked["points"] / wall, 1),
        batches_acked=acked["batches"],
        send_errors=acked["errors"],
        window_rows=len(frame),
        points_out_per_s=round(float(frame["count"].sum()) / wall, 1) if len(frame) else 0.0,
        emitted_to_visible_p50_s=_percentile(emitted, 50),
        emitted_to_visible_p99_s=_percentile(emitted, 99),
        window_end_to_visible_p50_s=_percentile(ended, 50),
        window_end_to_visible_p99_s=_percentile(ended, 99),
        processes=usage,
        scoring=scoring,
        verdicts_per_s=round(len(verdicts) / wall, 1) if verdicts is not None else 0.0,
        verdicts_model_scored=round(float(verdicts.scored.mean()), 3) if verdict_lag is not None else 0.0,
        verdict_window_end_to_visible_p50_s=_percentile(verdict_lag, 50) if verdict_lag is not None else None,
        verdict_window_end_to_visible_p99_s=_percentile(verdict_lag, 99) if verdict_lag is not None else None,
    )


def _make_sender(settings: Settings):

    return _sender_factory(settings)


def machine_description() -> str:
    memory = psutil.virtual_memory().total / 2**30
    return f"{platform.node()}: {psutil.cpu_count()} cores, {memory:.0f} GiB, {platform.platform()}"


def results_table(results: list[BenchResult]) -> Table:
    table = Table(title=f"vigil bench throughput — {datetime.now(UTC):%Y-%m-%d} — {machine_description()}")
    for column in (
        "machines",
        "scoring",
        "points/s in",
        "points/s out (ClickHouse)",
        "windows",
        "emit->visible p50/p99",
        "window end->visible p50/p99",
        "verdicts/s (model-scored)",
        "verdict window end->visible p50/p99",
        "send errors",
    ):
        table.add_column(column, justify="right")

    def pair(a: float | None, b: float | None) -> str:
        return "-" if a is None else f"{a:.2f} / {b:.2f} s"

    for r in results:
        table.add_row(
            str(r.machines),
            "on" if r.scoring else "off",
            f"{r.points_in_per_s:,.0f}",
            f"{r.points_out_per_s:,.0f}",
            f"{r.window_rows:,}",
            pair(r.emitted_to_visible_p50_s, r.emitted_to_visible_p99_s),
            pair(r.window_end_to_visible_p50_s, r.window_end_to_visible_p99_s),
            f"{r.verdicts_per_s:,.0f} ({100 * r.verdicts_model_scored:.0f} %)" if r.scoring else "-",
            pair(r.verdict_window_end_to_visible_p50_s, r.verdict_window_end_to_visible_p99_s),
            str(r.send_errors),
        )
    return table


def usage_table(result: BenchResult) -> Table:
    table = Table(title=f"processes at {result.machines:,} machines")
    table.add_column("process")
    table.add_column("peak RSS (MiB)", justify="right")
    table.add_column("CPU (% of one core)", justify="right")
    for name, usage in sorted(result.processes.items()):
        table.add_row(name, f"{usage.peak_rss_mb:,.0f}", f"{100 * usage.cpu_seconds / result.duration_s:.0f}")
    return table


def run_throughput_bench(
    settings: Settings,
    machines: list[int],
    duration_s: float,
    output: Path | None,
    console: Console,
    scoring: tuple[bool, ...] = (True,),
) -> list[BenchResult]:
    results = []
    for count in machines:
        for with_scoring in scoring:
            result = measure(settings, count, duration_s, console, scoring=with_scoring)
            results.append(result)
            console.print(usage_table(result))
    console.print(results_table(results))
    if output:
        output.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results
