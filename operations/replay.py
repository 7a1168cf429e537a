"""`vigil replay`: labelled recordings streamed through the live stack, the pages they caused counted against labels.

The simulator's figures say how Vigil does on data whose physics we wrote; a recording says how it does on a
real machine. Each file becomes one machine that reports through the gateway client exactly as a plant's
gateway does: a batch every ``batch_interval_s`` with the rows whose time fell in it, the file's times shifted so
its first row is now (``speed`` > 1 compresses them, so a 5-s window then covers 5 x speed s of the recording).
Every file streams in parallel. So the recordings are windowed by Flink, scored, alerted by the publisher and
paged by the relay like any telemetry, and what is counted is what the relay delivered to the Slack stand-in.

1. ``history`` (a recording of normal operation, e.g. SKAB's anomaly-free.csv) is cut into
   ``history_machines`` consecutive parts streamed as that many machines of the type, so hours of history take
   minutes; its windows land in ClickHouse, and ``vigil train`` trains and promotes the type's models from them,
   as for any fleet. Pages in this phase are pages on normal data (only the rules score: no model yet).
2. The labelled files are streamed; their pages are scored with :mod:`operations.evaluate.pages`' definitions:
   true when the machine had a labelled anomaly from 30 s before its start to 2 min after its end, an anomaly is
   paged when a page falls in [start, end + 2 min], delay = delivery - anomaly start.

A machine whose file ended is silenced (its dead-machine alert only), as an operator silences a planned stop, and
the sites are silenced at the end, so stopping the replay pages nobody.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from alerting.store import Store
from connectors.alertmanager import AlertmanagerClient, AlertmanagerError
from connectors.clickhouse import WINDOW_STATS_TABLE, make_client
from edge.gateway import GatewayClient
from edge.proto import telemetry_pb2
from operations.bench.alerts import delivered_alerts
from operations.bench.latency import bench_settings, start_bench_stack
from operations.bench.throughput import machine_description
from operations.evaluate.nab import read_nab_csv
from operations.evaluate.pages import TRUE_AFTER_MS, page_scorecard, page_summary
from operations.evaluate.skab import TIME_COLUMN, read_skab_file, sensor_columns
from operations.training.detectors import train
from vigil.settings import Settings

FORMATS = ("skab", "nab")
HISTORY_SITE, REPLAY_SITE = "replay-history", "replay"
REPLAYED_BY = "vigil replay"
TAIL_S = 150.0  # after the last row: the last windows close, incidents resolve, the relay delivers
_NOT_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Recording:
    """One recorded machine: rows in time order, their offsets from the first row, and labelled anomalies."""

    name: str
    sensors: tuple[str, ...]  # sensor names as Vigil writes them (lower snake case)
    offsets_ms: np.ndarray  # int64, from the first row, non-decreasing
    values: np.ndarray  # float64, rows x sensors
    anomalies: tuple[tuple[int, int], ...] = ()  # (first, last) offsets of each labelled anomaly, inclusive

    @property
    def duration_ms(self) -> int:
        return int(self.offsets_ms[-1]) if len(self.offsets_ms) else 0


def sensor_name(column: str) -> str:
    """A recording's column as a sensor name: lower snake case ("Volume Flow RateRMS" -> volume_flow_raterms)."""
    name = _NOT_NAME.sub("_", column.strip().lower()).strip("_")
    if not name:
        raise ValueError(f"column {column!r} gives an empty sensor name; rename it")
    return name


def _intervals(offsets_ms: np.ndarray, labels: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Runs of labelled rows as (first offset, last offset)."""
    flag = np.concatenate([[0], (np.asarray(labels) > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flag))
    return tuple((int(offsets_ms[a]), int(offsets_ms[b - 1])) for a, b in zip(edges[::2], edges[1::2], strict=True))


def _recording(
    name: str, times: np.ndarray, values: np.ndarray, sensors: Sequence[str], labels: np.ndarray
) -> Recording:
    ns = times.astype("datetime64[ns]").astype(np.int64)
    if len(ns) < 2:
        raise ValueError(f"{name}: {len(ns)} rows; a replay needs at least two")
    order = np.argsort(ns, kind="stable")
    offsets = (ns[order] - ns[order][0]) // 1_000_000
    rows = np.asarray(values, dtype=np.float64)[order]
    bad = ~np.isfinite(rows)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} empty or non-numeric values; fill or drop those rows first")
    names = tuple(sensor_name(s) for s in sensors)
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: columns {list(sensors)} give duplicate sensor names {list(names)}")
    return Recording(name, names, offsets.astype(np.int64), rows, _intervals(offsets, np.asarray(labels)[order]))


def read_skab_recording(path: Path) -> Recording:
    """A SKAB file (``;``-separated, ``datetime``, sensor columns, ``anomaly``): anomalies are its anomaly=1 runs."""
    frame = read_skab_file(path).frame
    columns = sensor_columns(frame)
    labels = frame["anomaly"].to_numpy() if "anomaly" in frame.columns else np.zeros(len(frame))
    return _recording(path.stem, frame[TIME_COLUMN].to_numpy(), frame[columns].to_numpy(), columns, labels)


def read_nab_recording(path: Path, windows_file: Path | None) -> Recording:
    """A NAB file (``timestamp,value``), anomalies from NAB's windows file (keys are paths like ``folder/x.csv``)."""
    windows: list[list[str]] = []
    key = f"{path.parent.name}/{path.name}"
    if windows_file is not None:
        try:
            windows = json.loads(windows_file.read_text()).get(key, [])
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{windows_file}: not a readable NAB windows file ({exc})") from exc
    nab = read_nab_csv(path, key, windows)
    return _recording(path.stem, nab.timestamps, nab.values[:, None], ["value"], nab.labels)


def read_recording(path: Path, fmt: str, windows_file: Path | None = None) -> Recording:
    if fmt == "skab":
        return read_skab_recording(path)
    if fmt == "nab":
        return read_nab_recording(path, windows_file)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def split_recording(recording: Recording, parts: int) -> list[Recording]:
    """``parts`` consecutive pieces of a recording, each starting at offset 0 (history for as many machines)."""
    n = len(recording.offsets_ms)
    parts = max(1, min(parts, n // 2))
    out = []
    for i, idx in enumerate(np.array_split(np.arange(n), parts)):
        offsets = recording.offsets_ms[idx] - recording.offsets_ms[idx[0]]
        out.append(
            replace(
                recording,
                name=f"{recording.name}-{i + 1}",
                offsets_ms=offsets,
                values=recording.values[idx],
                anomalies=(),
            )
        )
    return out


def split_leading(recording: Recording, rows: int) -> tuple[Recording, Recording]:
    """The first ``rows`` rows (cut before the first labelled anomaly) as history, and the rest, both from
    offset 0: SKAB's own protocol, where each experiment's leading normal rows are what a model may learn from."""
    n = rows
    if recording.anomalies:
        n = min(n, int(np.searchsorted(recording.offsets_ms, recording.anomalies[0][0], side="left")))
    if n < 2 or n >= len(recording.offsets_ms) - 1:
        raise ValueError(
            f"{recording.name}: {n} leading normal rows of {len(recording.offsets_ms)}; "
            "--history-rows needs at least two before its first labelled anomaly and two after"
        )
    base = int(recording.offsets_ms[n])
    head = replace(
        recording,
        name=f"{recording.name}-head",
        offsets_ms=recording.offsets_ms[:n].copy(),
        values=recording.values[:n],
        anomalies=(),
    )
    tail = replace(
        recording,
        offsets_ms=recording.offsets_ms[n:] - base,
        values=recording.values[n:],
        anomalies=tuple((a - base, b - base) for a, b in recording.anomalies),
    )
    return head, tail


@dataclass
class ReplayMachine:
    """A recording as one machine reporting from ``start_ms`` (epoch ms of its first row) at ``speed``."""

    recording: Recording
    equipment_id: str
    site: str
    equipment_type: str
    start_ms: int
    speed: float = 1.0
    sequence: int = 0
    sent_rows: int = 0
    event_ms: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.event_ms = self.start_ms + np.floor(self.recording.offsets_ms / self.speed).astype(np.int64)

    @property
    def end_ms(self) -> int:
        return int(self.event_ms[-1])

    @property
    def done(self) -> bool:
        return self.sent_rows >= len(self.event_ms)

    def batch(self, until_ms: int, sent_at_ms: int) -> telemetry_pb2.ReadingBatch | None:
        """The rows not yet sent whose event time is before ``until_ms``, as one batch (None: no such row)."""
        stop = int(np.searchsorted(self.event_ms, until_ms, side="left"))
        if stop <= self.sent_rows:
            return None
        rows = slice(self.sent_rows, stop)
        self.sent_rows = stop
        self.sequence += 1
        ts = self.event_ms[rows].tolist()
        return telemetry_pb2.ReadingBatch(
            equipment_id=self.equipment_id,
            site=self.site,
            equipment_type=self.equipment_type,
            gateway_id=REPLAYED_BY.replace(" ", "-"),
            sequence=self.sequence,
            sent_at_ms=sent_at_ms,
            sensors=[
                telemetry_pb2.SensorSeries(
                    sensor=name, timestamps_ms=ts, values=self.recording.values[rows, j].tolist()
                )
                for j, name in enumerate(self.recording.sensors)
            ],
        )

    def anomalies_ms(self) -> list[tuple[int, int]]:
        return [
            (self.start_ms + int(a / self.speed), self.start_ms + int(b / self.speed))
            for a, b in self.recording.anomalies
        ]


def stream(
    machines: Sequence[ReplayMachine],
    client: GatewayClient,
    interval_ms: int,
    on_done: Callable[[ReplayMachine], None] = lambda m: None,
    on_tick: Callable[[int], None] = lambda now: None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Send every machine's rows in real time, one batch per machine per ``interval_ms`` boundary of the wall
    clock (the rows whose time fell in the interval just ended); returns the batches sent. A batch the edge
    cannot take now is buffered by the gateway client and replayed later, as on a plant's gateway."""
    stop = stop or threading.Event()
    sent = 0
    pending = [m for m in machines if not m.done]
    while pending and not stop.is_set():
        now_ms = int(clock() * 1000)
        boundary = (now_ms // interval_ms + 1) * interval_ms
        if stop.wait(max(0.0, boundary / 1000 - clock())):
            break
        batches = [b for m in pending if (b := m.batch(boundary, boundary)) is not None]
        if batches:
            ack = client.send(batches)
            sent += len(batches)
            if ack is not None and ack.rejected_batches:
                reasons = sorted({r.reason for r in ack.rejections})
                raise RuntimeError(
                    f"the edge rejected {ack.rejected_batches} replayed batch(es) ({', '.join(reasons)}); "
                    "`vigil dead-letters` shows them with the reason"
                )
        for m in [m for m in pending if m.done]:
            on_done(m)
        pending = [m for m in pending if not m.done]
        on_tick(boundary)
    return sent


@dataclass
class ReplayResult:
    when: str
    machine_description: str
    fmt: str
    equipment_type: str
    speed: float
    history: str | None
    history_machines: int
    history_hours: float  # machine-hours of normal history streamed (phase 1)
    history_pages: int  # firing pages during phase 1: all on normal data, before any model
    models: list[str]
    summary: dict[str, Any]  # page_summary of phase 2
    normal_hours: float  # phase-2 machine-hours outside labelled anomalies and their margins
    files: list[dict[str, Any]]


def _silence(settings: Settings, matchers: list[str], comment: str, console: Console) -> None:
    try:
        with AlertmanagerClient.for_settings(settings) as client:
            client.create_silence(matchers, 24 * 3600, comment=comment, created_by=REPLAYED_BY)
    except AlertmanagerError as exc:
        console.print(f"[yellow]could not silence {matchers} in Alertmanager ({exc}): expect a page about it")


def _await_windows(settings: Settings, equipment_type: str, until_ms: int, timeout_s: float, console: Console) -> None:
    """Wait until ClickHouse holds the type's windows up to ``until_ms`` (the cold path writes in batches)."""
    deadline = time.monotonic() + timeout_s
    client = make_client(settings.clickhouse, "admin")
    try:
        while True:
            newest = client.query(
                f"SELECT toUnixTimestamp64Milli(max(window_start)) FROM {WINDOW_STATS_TABLE} "
                "WHERE equipment_type = {t:String}",
                parameters={"t": equipment_type},
            ).result_rows[0][0]
            if newest and int(newest) >= until_ms - 3 * settings.simulator.batch_interval_s * 1000:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ClickHouse has no {equipment_type} windows up to the history's end after {timeout_s:.0f} s "
                    f"(newest window start, epoch ms: {newest}); is the window-stats job and its ClickHouse sink "
                    "running? `vigil stack status`"
                )
            time.sleep(2)
    finally:
        client.close()


def _machines(
    recordings: Sequence[Recording], prefix: str, site: str, etype: str, start_ms: int, speed: float
) -> list[ReplayMachine]:
    return [
        ReplayMachine(r, f"{prefix}-{sensor_name(r.name).replace('_', '-')}", site, etype, start_ms, speed)
        for r in recordings
    ]


def _phase(
    settings: Settings,
    machines: list[ReplayMachine],
    client: GatewayClient,
    what: str,
    console: Console,
) -> None:
    interval_ms = int(settings.simulator.batch_interval_s * 1000)
    end = max(m.end_ms for m in machines)
    total = sum(len(m.event_ms) for m in machines)
    console.print(
        f"{what}: {len(machines)} machine(s), {total:,} rows, until "
        f"{datetime.fromtimestamp(end / 1000, UTC):%H:%M:%S} UTC ({(end - time.time() * 1000) / 60_000:.1f} min)"
    )

    def done(m: ReplayMachine) -> None:
        _silence(
            settings,
            [f'equipment_id="{m.equipment_id}"', 'detector="dead_machine"'],
            f"planned stop: vigil replay reached the end of {m.recording.name}",
            console,
        )

    last = [0.0]

    def tick(now_ms: int) -> None:
        if time.monotonic() - last[0] >= 60:
            last[0] = time.monotonic()
            sent = sum(m.sent_rows for m in machines)
            console.print(f"  {what}: {sent:,} of {total:,} rows sent, {(end - now_ms) / 60_000:.1f} min left")

    stream(machines, client, interval_ms, on_done=done, on_tick=tick)


def run_replay(
    settings: Settings,
    files: Sequence[Path],
    fmt: str,
    console: Console,
    history: Path | None = None,
    history_machines: int = 8,
    history_rows: int = 0,
    equipment_type: str | None = None,
    windows_file: Path | None = None,
    speed: float = 1.0,
    output: Path | None = None,
) -> ReplayResult:
    if speed <= 0:
        raise ValueError(f"--speed must be > 0, got {speed}")
    if not files:
        raise ValueError("name at least one labelled file to replay")
    etype = equipment_type or f"{fmt}_replay"
    if history is not None and history_rows:
        raise ValueError("give --history (a normal recording) or --history-rows (each file's leading rows), not both")
    recordings = [read_recording(p, fmt, windows_file) for p in files]
    history_parts: list[Recording] = []
    history_name = None
    if history is not None:
        history_parts = split_recording(read_recording(history, fmt, windows_file), history_machines)
        history_name = str(history)
    elif history_rows:
        pairs = [split_leading(r, history_rows) for r in recordings]
        history_parts, recordings = [h for h, _ in pairs], [t for _, t in pairs]
        history_name = f"the first {history_rows} normal rows of each file"
    settings = bench_settings(settings, settings.flink.topology)
    interval_ms = int(settings.simulator.batch_interval_s * 1000)
    start_bench_stack(settings, console)  # the relay's outbox is counted (it carries the labels)
    run = datetime.now(UTC).strftime("%H%M%S")
    client = GatewayClient(settings, gateway_id=f"replay-{run}")
    first_ms = int(time.time() * 1000)
    try:
        history_hours, models = 0.0, []
        if history_parts:
            start = (int(time.time() * 1000) // interval_ms + 1) * interval_ms
            normal = _machines(history_parts, f"hist{run}", HISTORY_SITE, etype, start, speed)
            history_hours = sum(m.end_ms - m.start_ms for m in normal) / 3_600_000
            _phase(settings, normal, client, f"history ({history_name})", console)
            _silence(settings, [f'site="{HISTORY_SITE}"'], "planned stop: vigil replay's history ended", console)
            _await_windows(settings, etype, max(m.end_ms for m in normal), 120, console)
            with console.status(f"training the {etype} models on the replayed history..."):
                versions = train(settings, start, max(m.end_ms for m in normal) + 1, [etype], promote=True)
            models = [f"{v.equipment_type}/{v.detector} {v.version} (threshold {v.threshold:.4g})" for v in versions]
            console.print("trained and live: " + "; ".join(models))
            time.sleep(3 * settings.scoring.model_poll_s)  # the scoring job loads live models on its next poll
        phase2_ms = int(time.time() * 1000)
        start = (phase2_ms // interval_ms + 1) * interval_ms
        replayed = _machines(recordings, f"{fmt}{run}", REPLAY_SITE, etype, start, speed)
        _phase(settings, replayed, client, f"{len(files)} labelled file(s)", console)
        end_ms = max(m.end_ms for m in replayed)
        with console.status(f"waiting {TAIL_S:.0f} s for the last windows, resolutions and deliveries..."):
            time.sleep(max(0.0, end_ms / 1000 + TAIL_S - time.time()))
    finally:
        _silence(settings, [f'site=~"{HISTORY_SITE}|{REPLAY_SITE}"'], "planned stop: vigil replay ended", console)
        client.close()
    scored_end = int(time.time() * 1000)
    store = Store(settings.alerting_state_path)
    try:
        rows = store.find(receiver="slack")
    finally:
        store.close()
    alerts, _, _ = delivered_alerts(rows, first_ms, scored_end)
    history_pages = int(((alerts["at_ms"] < phase2_ms) & alerts["firing"]).sum())
    alerts = alerts[alerts["at_ms"] >= phase2_ms]
    faults = pd.DataFrame(
        [
            {"machine": m.equipment_id, "category": m.recording.name, "start_ms": a, "end_ms": b}
            for m in replayed
            for a, b in m.anomalies_ms()
        ],
        columns=["machine", "category", "start_ms", "end_ms"],
    ).astype({"start_ms": "int64", "end_ms": "int64"})
    machines_frame = pd.DataFrame([(m.equipment_id, m.site) for m in replayed], columns=["equipment_id", "site"])
    card = page_scorecard(alerts, faults, phase2_ms, scored_end, machines_frame)
    per_file, normal_ms = [], 0
    for m in replayed:
        own = card.pages[card.pages["equipment_id"] == m.equipment_id]
        mine = card.faults[card.faults["machine"] == m.equipment_id]
        anomalous = sum(min(b + TRUE_AFTER_MS, m.end_ms) - max(a - 30_000, m.start_ms) for a, b in m.anomalies_ms())
        normal_ms += max(0, m.end_ms - m.start_ms - anomalous)
        per_file.append(
            {
                "file": m.recording.name,
                "machine": m.equipment_id,
                "rows": len(m.event_ms),
                "minutes": (m.end_ms - m.start_ms) / 60_000,
                "anomalies": len(mine),
                "anomalies_paged": int(mine["paged"].sum()),
                "first_delay_s": float(mine["delay_s"].min()) if mine["paged"].any() else None,
                "true_pages": int(own["true"].sum()),
                "false_pages": int((~own["true"]).sum()),
                "false_by_detector": {
                    str(k): int(v) for k, v in own.loc[~own["true"], "detector"].value_counts().items()
                },
            }
        )
    result = ReplayResult(
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine_description=machine_description(),
        fmt=fmt,
        equipment_type=etype,
        speed=speed,
        history=history_name,
        history_machines=len(history_parts),
        history_hours=history_hours,
        history_pages=history_pages,
        models=models,
        summary=page_summary(card),
        normal_hours=normal_ms / 3_600_000,
        files=per_file,
    )
    print_replay(result, console)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(asdict(result), indent=2, default=str))
        console.print(f"figures written to {output}")
    return result


def print_replay(result: ReplayResult, console: Console) -> None:
    s = result.summary
    table = Table(title=f"vigil replay {result.fmt} — {result.when} — {result.machine_description}")
    for column in (
        "file",
        "rows",
        "min",
        "anomalies",
        "paged",
        "first delay s",
        "true pages",
        "false pages (by detector)",
    ):
        table.add_column(column, justify="left" if column.startswith(("file", "false")) else "right")
    for f in result.files:
        delay = "" if f["first_delay_s"] is None else f"{f['first_delay_s']:.1f}"
        falses = ", ".join(f"{k} {v}" for k, v in f["false_by_detector"].items())
        table.add_row(
            f["file"],
            f"{f['rows']:,}",
            f"{f['minutes']:.1f}",
            str(f["anomalies"]),
            str(f["anomalies_paged"]),
            delay,
            str(f["true_pages"]),
            f"{f['false_pages']}" + (f" ({falses})" if falses else ""),
        )
    console.print(table)
    false = int(s["false_critical"]) + int(s["false_warning"])
    console.print(
        f"Pooled over {len(result.files)} file(s) at speed {result.speed:g}: {s['faults_paged']} of {s['faults']} "
        f"labelled anomalies paged; {s['true_pages']} true and {false} false pages ({s['false_critical']} critical), "
        f"{result.normal_hours:.2f} machine-hours of normal rows outside the anomalies' margins"
        + (
            f" ({1000 * false / result.normal_hours:,.0f} false pages per 1,000 normal machine-hours)"
            if result.normal_hours
            else ""
        )
    )
    if result.history:
        console.print(
            f"History {result.history}: {result.history_hours:.2f} machine-hours on {result.history_machines} "
            f"machines, {result.history_pages} page(s) while it streamed (rules only, before the models); models: "
            + ("; ".join(result.models) or "none")
        )
