"""Hot path: latest window statistics and anomaly verdicts per machine -> Prometheus Pushgateway.

Consumes ``settings.kafka.window_stats_topic`` and ``settings.kafka.anomalies_topic`` with one
consumer (group ``settings.prometheus.sink_consumer_group``): both feed the same push rounds, and
offsets of both are committed after the same successful push. It keeps the newest window per
(equipment_id, sensor) and the newest verdict per equipment_id, each in one pandas DataFrame
(:class:`_Latest`: one merge and one expiry for both), and every
``settings.prometheus.push_interval_s`` PUTs the Prometheus text exposition to the Pushgateway,
one group per job and site (``/metrics/job/vigil_window_stats/site/<site>`` and
``/metrics/job/vigil_anomalies/site/<site>``) so a PUT replaces exactly that site's series.

Verdict gauges: ``vigil_anomaly_score`` (combined score), ``vigil_anomaly_severity`` (0 normal,
1 warning, 2 critical), ``vigil_detector_score{detector}`` (each detector that scored),
``vigil_machine_silent`` (1 from a dead_machine verdict until the machine's next window verdict),
``vigil_anomaly_window_end_seconds`` (event time of the verdict: scoring lag, and what a restart
seeds expiry from), and per site the counter ``vigil_anomalous_windows_total{severity}`` of
anomalous window verdicts. The counter counts a key (equipment_id, window_start_ms) once even when
Kafka redelivers it: the sink remembers the anomalous keys of the last ``series_ttl_s`` of event
time (at most ``DEDUP_MAX_KEYS``, as 64-bit hashes). Across a crash, verdicts pushed but not yet
committed are re-read and may count again (the memory is not persisted). Malformed verdicts are
skipped and counted; the ClickHouse sink dead-letters them.

Why the sink expires series itself: the Pushgateway is a cache, not a time-series store. It
never forgets a pushed series, and Prometheus stamps every scrape of it with the current time,
so a machine that stopped reporting would look alive forever with its last value. The sink
therefore drops series whose last window ended more than ``series_ttl_s`` ago from the next
PUT (which removes them from the group), and the dead-man alert on
``vigil_equipment_last_window_end_seconds`` (event time, not push time) catches silence long
before that.

Delivery: gauges are idempotent (replaying a window sets the same value; an older window never
overwrites a newer one), so committing Kafka offsets only after a successful push gives exact
results with at-least-once consumption. On start the state is seeded from what the Pushgateway
already holds, so a restart neither forgets silent machines nor ends their dead-man alerts.

One sink per Pushgateway: several replicas in the group would each PUT a partial site group.

This module keeps the state taken in from the batches (and seeded at start); :mod:`jobs.metrics_render`
turns it into the text exposition (no I/O) and :mod:`connectors.pushgateway` sends it: a push round is
render, then push.

Run: ``python -m jobs.pushgateway_sink`` (until SIGTERM/SIGINT).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
from confluent_kafka import Message

from connectors.kafka import ensure_topics, make_consumer, run_batches
from connectors.monitoring import MonitoringCredentialsMissing
from connectors.pushgateway import PushgatewayClient, PushgatewayError, grouping_path
from detectors import score_names
from jobs.metrics_render import (
    SinkCounters,
    escape_label_values,
    format_values,
    machine_labels,
    render_pipeline,
    render_verdicts,
    render_window_stats,
    series_labels,
)
from vigil.contracts import (
    ANOMALY_KINDS,
    SCORES_FIELD,
    SEVERITIES,
    WINDOW_STATS_JSON_SCHEMA,
    WINDOW_STATS_LABELS,
    WINDOW_STATS_MARKER_PREFIX,
    WINDOW_STATS_VALUES,
    anomaly_json_schema,
)
from vigil.logs import setup_logging
from vigil.settings import Settings, get_settings
from vigil.signals import stop_event_on_signals

# Rendering and the HTTP client moved out of this module; these names stay importable from here.
__all__ = ["PushgatewaySink", "SinkCounters", "escape_label_values", "format_values", "grouping_path", "main"]

log = logging.getLogger(__name__)

WINDOW_JOB = "vigil_window_stats"
ANOMALY_JOB = "vigil_anomalies"
SINK_JOB = "vigil_pushgateway_sink"
HTTP_TIMEOUT = (2.0, 10.0)  # connect, read (seconds)
# Anomalous keys remembered for counting each once: 16 bytes each, so at most 16 MB.
DEDUP_MAX_KEYS = 1_000_000

_STATS = WINDOW_STATS_VALUES
_STRINGS = WINDOW_STATS_LABELS
# The contract's fields this sink needs; every statistic as float64 (a gauge value).
_SCHEMA = pa.schema(
    [WINDOW_STATS_JSON_SCHEMA.field(name) for name in (*_STRINGS, "window_start_ms", "window_end_ms")]
    + [(stat, pa.float64()) for stat in _STATS]
)
_STATE_DTYPES = {
    **dict.fromkeys(_STRINGS, object),
    "window_end_ms": np.int64,
    **dict.fromkeys(_STATS, np.float64),
    "series_labels": object,
    "machine_labels": object,
}
_VERDICT_FIELDS = (
    "equipment_id",
    "site",
    "equipment_type",
    "window_start_ms",
    "window_end_ms",
    "kind",
    "is_anomaly",
    "severity",
    "score",
    SCORES_FIELD,
    "emitted_at_ms",
)


def _verdict_dtypes(names: Sequence[str]) -> dict[str, object]:
    return {
        "site": object,
        "equipment_id": object,
        "equipment_type": object,
        "window_end_ms": np.int64,
        "emitted_at_ms": np.int64,
        "kind": object,
        "severity": np.int64,
        "score": np.float64,
        **dict.fromkeys(names, np.float64),
        "machine_labels": object,
    }


def _empty_frame(dtypes: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in dtypes.items()})


def _parse(values: Sequence[bytes], schema: pa.Schema) -> pd.DataFrame:
    """One pyarrow JSON parse per batch; per-message orjson only to isolate a bad record.

    Records that are not JSON objects are left out; fields of the wrong type become null.
    A struct field (the verdict's ``scores`` object) becomes one column per member, named after the member.
    """
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    structs = [f for f in schema if pa.types.is_struct(f.type)]
    try:
        table = pa_json.read_json(io.BytesIO(b"\n".join(values)), parse_options=options).select(schema.names)
        frame = table.flatten().to_pandas()
        return frame.rename(columns={f"{f.name}.{m.name}": m.name for f in structs for m in f.type})
    except pa.ArrowInvalid:
        rows = []
        for value in values:
            try:
                row = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        frame = pd.DataFrame(rows, columns=schema.names)
        for field in structs:
            members = frame.pop(field.name).map(lambda v: v if isinstance(v, dict) else {})
            for member in field.type:
                frame[member.name] = pd.to_numeric(members.map(lambda d, m=member.name: d.get(m)), errors="coerce")
        for field in schema:
            if pa.types.is_struct(field.type):
                continue
            if pa.types.is_string(field.type) or pa.types.is_boolean(field.type):
                kind = str if pa.types.is_string(field.type) else bool
                column = frame[field.name]
                frame[field.name] = column.where(column.map(lambda v, kind=kind: isinstance(v, kind)), None)
            else:
                frame[field.name] = pd.to_numeric(frame[field.name], errors="coerce")
        return frame


class _Latest:
    """The newest row per key, with rows whose window ended ``ttl_s`` ago (event time) expired.

    One merge and one expiry for every kind of series the sink pushes (window stats per machine
    and sensor, verdicts per machine). Rows come in as queued frames; :meth:`merge` folds them in.
    """

    def __init__(self, what: str, key: list[str], order: list[str], dtypes: dict[str, object]) -> None:
        self.what = what
        self.key = key
        self.order = order  # later rows win; ties go to the row that arrived last
        self.columns = list(dtypes)
        self.state = _empty_frame(dtypes)
        self._pending: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame) -> None:
        self._pending.append(frame.reindex(columns=self.columns))

    def merge(self, now: float, ttl_s: float) -> pd.DataFrame:
        """Fold pending rows into the state and drop expired ones; sorted by site, then key."""
        if self._pending:
            combined = pd.concat([self.state, *self._pending], ignore_index=True)
            self._pending.clear()
            combined = combined.sort_values(self.order, kind="stable")
            combined = combined[~combined.duplicated(self.key, keep="last")]
        else:
            combined = self.state
        cutoff_ms = (now - ttl_s) * 1000.0
        live = combined[combined["window_end_ms"].to_numpy() >= cutoff_ms]
        dropped = len(combined) - len(live)
        if dropped:
            log.info("expired %d %s silent for more than %.0f s", dropped, self.what, ttl_s)
        self.state = live.sort_values(["site", *self.key], kind="stable", ignore_index=True)
        return self.state


class PushgatewaySink:
    """Kafka window stats and verdicts -> Pushgateway gauges. Thread-safe counters via :attr:`counters`."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._prom = settings.prometheus
        self._stats = list(dict.fromkeys(self._prom.exported_stats))
        self._windows = _Latest("window-stats series", ["equipment_id", "sensor"], ["window_end_ms"], _STATE_DTYPES)
        # Detector scores: one column each while in state, one vigil_detector_score series each when pushed.
        self._score_names = score_names()
        self._anomaly_schema = pa.schema(anomaly_json_schema(self._score_names).field(n) for n in _VERDICT_FIELDS)
        self._verdicts = _Latest(
            "machines' verdicts",
            ["equipment_id"],
            ["window_end_ms", "emitted_at_ms"],
            _verdict_dtypes(self._score_names),
        )
        # Anomalous keys already counted (hash of equipment_id + window_start_ms) and their windows.
        self._seen_keys = np.empty(0, dtype=np.uint64)
        self._seen_starts = np.empty(0, dtype=np.int64)
        self._anomalous: dict[tuple[str, str], int] = {}  # (site, severity) -> anomalous windows
        self._pushed_groups: set[tuple[str, str]] = set()  # (job, site)
        self._lock = threading.Lock()
        self._counters = SinkCounters()
        self._rendered = {WINDOW_JOB: 0, ANOMALY_JOB: 0}
        self._client: PushgatewayClient | None = None  # built at the first push (it reads the credentials)
        self._next_push = 0.0  # monotonic time of the next push

    # -- counters -----------------------------------------------------------------------
    @property
    def counters(self) -> SinkCounters:
        with self._lock:
            return self._counters

    def _count(self, **changes: float) -> None:
        with self._lock:
            current = self._counters.__dict__
            self._counters = SinkCounters(**{**current, **{k: current[k] + v for k, v in changes.items()}})

    def _set(self, **values: float) -> None:
        with self._lock:
            self._counters = SinkCounters(**{**self._counters.__dict__, **values})

    # -- ingestion: window stats ----------------------------------------------------------
    def ingest(self, values: Sequence[bytes]) -> int:
        """Parse one Kafka batch of window-stats JSON values; returns the number of valid records."""
        if not values:
            return 0
        frame = _parse(values, _SCHEMA)
        bad = len(values) - len(frame)
        markers = frame["equipment_id"].str.startswith(WINDOW_STATS_MARKER_PREFIX, na=False)
        if markers.any():  # the window-stats job's progress markers: not windows, not bad records
            frame = frame[~markers.to_numpy()]
        key_ok = frame["equipment_id"].notna() & frame["sensor"].notna() & frame["site"].notna()
        key_ok &= frame["window_end_ms"].notna()
        if not key_ok.all():
            frame = frame[key_ok.to_numpy()]
            bad += int((~key_ok).sum())
        if bad:
            log.warning(
                "skipped %d window-stats records without equipment_id/site/sensor/window_end_ms "
                "or not JSON; fix the producer (Flink job) or inspect the topic",
                bad,
            )
        added = self._add(frame)
        self._count(windows_consumed=added, bad_records=bad)
        return added

    def _add(self, frame: pd.DataFrame) -> int:
        """Queue valid rows for the next merge, with their label strings escaped once, here."""
        if frame.empty:
            return 0
        frame = frame.assign(
            window_end_ms=frame["window_end_ms"].astype(np.int64),
            equipment_type=frame["equipment_type"].fillna(""),
            unit=frame["unit"].fillna(""),
        )
        machine = machine_labels(frame)
        frame["machine_labels"] = machine
        frame["series_labels"] = series_labels(frame, machine)
        self._windows.add(frame)
        return len(frame)

    # -- ingestion: anomaly verdicts ------------------------------------------------------
    def ingest_anomalies(self, values: Sequence[bytes]) -> int:
        """Parse one Kafka batch of verdict JSON values; returns the number of valid verdicts."""
        if not values:
            return 0
        frame = _parse(values, self._anomaly_schema)
        bad = len(values) - len(frame)
        ok = frame["equipment_id"].notna() & frame["site"].notna()
        ok &= frame["window_start_ms"].notna() & frame["window_end_ms"].notna()
        ok &= frame["kind"].isin(ANOMALY_KINDS) & frame["severity"].isin(SEVERITIES)
        if not ok.all():
            frame = frame[ok.to_numpy()]
            bad += int((~ok).sum())
        if bad:
            log.warning(
                "skipped %d anomaly verdicts without equipment_id/site/window_start_ms/window_end_ms, "
                "with an unknown kind or severity, or not JSON; fix the producer (scoring job) or "
                "inspect the topic",
                bad,
            )
        frame = frame.assign(
            window_start_ms=frame["window_start_ms"].astype(np.int64),
            window_end_ms=frame["window_end_ms"].astype(np.int64),
            emitted_at_ms=frame["emitted_at_ms"].fillna(0).astype(np.int64),
            equipment_type=frame["equipment_type"].fillna(""),
            is_anomaly=frame["is_anomaly"].eq(True),
            score=frame["score"].astype(np.float64),
        )
        self._count_anomalous(frame)
        added = self._add_verdicts(frame.assign(severity=pd.Categorical(frame["severity"], SEVERITIES).codes))
        self._count(verdicts_consumed=added, bad_verdicts=bad)
        return added

    def _add_verdicts(self, frame: pd.DataFrame) -> int:
        """Queue verdicts (severity as its code) for the next merge, labels escaped once, here."""
        if frame.empty:
            return 0
        self._verdicts.add(frame.assign(machine_labels=machine_labels(frame)))
        return len(frame)

    def _count_anomalous(self, frame: pd.DataFrame) -> None:
        """Add anomalous window verdicts to the per-site counters, each key once (bounded memory)."""
        hits = frame[(frame["kind"] == "window").to_numpy() & frame["is_anomaly"].to_numpy()]
        if hits.empty:
            return
        keys = pd.util.hash_pandas_object(hits[["equipment_id", "window_start_ms"]], index=False).to_numpy()
        starts = hits["window_start_ms"].to_numpy(np.int64)
        new = ~pd.Index(keys).duplicated() & ~np.isin(keys, self._seen_keys)
        if not new.any():
            return
        seen_keys = np.concatenate([self._seen_keys, keys[new]])
        seen_starts = np.concatenate([self._seen_starts, starts[new]])
        keep = seen_starts >= seen_starts.max() - self._prom.series_ttl_s * 1000.0
        if keep.sum() > DEDUP_MAX_KEYS:  # keep the newest windows
            keep = np.zeros(len(keep), dtype=bool)
            keep[np.argsort(seen_starts, kind="stable")[-DEDUP_MAX_KEYS:]] = True
        self._seen_keys, self._seen_starts = seen_keys[keep], seen_starts[keep]
        for (site, severity), n in hits[new].groupby(["site", "severity"], sort=False).size().items():
            self._anomalous[(site, severity)] = self._anomalous.get((site, severity), 0) + int(n)

    # -- exposition ---------------------------------------------------------------------
    def render(self, now: float | None = None) -> dict[str, str]:
        """Merge pending windows and return the window-stats text exposition per site (only live series)."""
        now = self._clock() if now is None else now
        state = self._windows.merge(now, self._prom.series_ttl_s)
        rendered = render_window_stats(
            state, self._stats, now=now, machine_silent_after_s=self._prom.machine_silent_after_s
        )
        self._rendered[WINDOW_JOB] = rendered.series
        return rendered.texts

    def render_anomalies(self, now: float | None = None) -> dict[str, str]:
        """Merge pending verdicts and return the verdict text exposition per site (only live machines)."""
        now = self._clock() if now is None else now
        state = self._verdicts.merge(now, self._prom.series_ttl_s)
        rendered = render_verdicts(state, self._score_names, self._anomalous)
        self._rendered[ANOMALY_JOB] = rendered.series
        return rendered.texts

    def render_groups(self, now: float | None = None) -> dict[tuple[str, str], str]:
        """Every live Pushgateway group, (job, site) -> text exposition."""
        now = self._clock() if now is None else now
        groups = {(WINDOW_JOB, site): text for site, text in self.render(now).items()}
        groups |= {(ANOMALY_JOB, site): text for site, text in self.render_anomalies(now).items()}
        return groups

    def render_pipeline(self) -> str:
        return render_pipeline(self.counters)

    # -- pushing ------------------------------------------------------------------------
    @staticmethod
    def _attempt(request: Callable[..., None], *args: str) -> str | None:
        """Returns None on success, else what went wrong (retries already done by the client)."""
        try:
            request(*args)
        except PushgatewayError as exc:
            return str(exc)
        return None

    def push(self, now: float | None = None) -> bool:
        """One push round: render, then PUT each live (job, site) group, DELETE emptied ones, then the sink's own.

        Never raises on HTTP trouble: failures are logged and counted, and the next round
        retries with the then-current state. Returns whether the window and verdict gauges (not
        the sink's own group) are in the Pushgateway, i.e. whether consumed offsets may be committed.
        """
        now = self._clock() if now is None else now
        groups = self.render_groups(now)
        try:
            gateway = self._gateway
        except PushgatewayError as exc:
            self._count(failures=1)
            log.error("cannot push to the Pushgateway %s: %s", self._prom.pushgateway_url, exc)
            return False
        errors = [
            self._attempt(gateway.put, grouping_path(job, site=site), text) for (job, site), text in groups.items()
        ]
        errors += [
            self._attempt(gateway.delete, grouping_path(job, site=site))
            for job, site in sorted(self._pushed_groups - groups.keys())
        ]
        errors = [e for e in errors if e]
        if errors:
            self._count(failures=1)
        else:
            self._pushed_groups = set(groups)
            self._count(pushes=1)
            self._set(series_pushed=sum(self._rendered.values()), last_push_ts=now)
        pipeline_error = self._attempt(gateway.put, grouping_path(SINK_JOB), self.render_pipeline())
        if pipeline_error and not errors:
            self._count(failures=1)
        if errors or pipeline_error:
            log.error(
                "push to Pushgateway %s failed (%d failed rounds so far; is it running?): %s",
                self._prom.pushgateway_url,
                self.counters.failures,
                "; ".join([*errors, pipeline_error or ""]).strip("; "),
            )
        return not errors

    @property
    def _gateway(self) -> PushgatewayClient:
        if self._client is None:
            try:
                self._client = PushgatewayClient.for_settings(self.settings, timeout=HTTP_TIMEOUT)
            except MonitoringCredentialsMissing as exc:
                raise PushgatewayError(str(exc)) from None
        return self._client

    def seed_from_pushgateway(self) -> int:
        """Load the series this sink pushed before a restart; returns how many rows. Best effort."""
        try:
            groups = self._gateway.groups()
        except PushgatewayError as exc:
            log.warning("could not read existing series from the Pushgateway (%s); starting empty", exc)
            return 0
        for group in groups:
            labels = group.get("labels", {})
            if labels.get("job") in (WINDOW_JOB, ANOMALY_JOB):
                self._pushed_groups.add((labels["job"], labels.get("site", "")))
        return self._seed_windows(groups) + self._seed_verdicts(groups)

    @staticmethod
    def _metrics(groups: list[dict], job: str, name: str, column: str) -> pd.DataFrame | None:
        """One metric of ``job``'s groups as a frame of its labels plus ``column``; None if absent."""
        rows = [
            {**metric["labels"], column: float(metric["value"])}
            for group in groups
            if group.get("labels", {}).get("job") == job
            for metric in group.get(name, {}).get("metrics", [])
        ]
        return pd.DataFrame(rows) if rows else None

    def _seed_windows(self, groups: list[dict]) -> int:
        key = ["site", "equipment_id", "equipment_type", "sensor", "unit"]
        frames = [
            frame.reindex(columns=[*key, stat]).set_index(key)
            for stat in self._stats
            if (frame := self._metrics(groups, WINDOW_JOB, f"vigil_window_{stat}", stat)) is not None
        ]
        ends = self._metrics(groups, WINDOW_JOB, "vigil_equipment_last_window_end_seconds", "end_s")
        if ends is None or not frames:
            return 0
        series = pd.concat(frames, axis=1).reset_index()
        end = ends.groupby("equipment_id")["end_s"].max()
        series["window_end_ms"] = (series["equipment_id"].map(end) * 1000).round()
        series = series[series["window_end_ms"].notna()]
        return self._add(series)

    def _seed_verdicts(self, groups: list[dict]) -> int:
        key = ["site", "equipment_id", "equipment_type"]
        metrics = {
            "score": "vigil_anomaly_score",
            "severity": "vigil_anomaly_severity",
            "silent": "vigil_machine_silent",
            "end_s": "vigil_anomaly_window_end_seconds",
        }
        frames = [
            frame.reindex(columns=[*key, column]).set_index(key)
            for column, name in metrics.items()
            if (frame := self._metrics(groups, ANOMALY_JOB, name, column)) is not None
        ]
        counts = self._metrics(groups, ANOMALY_JOB, "vigil_anomalous_windows_total", "count")
        if counts is not None:  # the counters continue from their pushed values
            for (site, severity), n in counts.groupby(["site", "severity"])["count"].max().items():
                self._anomalous[(site, severity)] = max(self._anomalous.get((site, severity), 0), int(n))
        if len(frames) < len(metrics):  # a gauge this sink always pushes is missing: nothing to seed
            return 0
        scores = self._metrics(groups, ANOMALY_JOB, "vigil_detector_score", "value")
        if scores is not None:
            frames.append(scores.pivot_table(index=key, columns="detector", values="value", aggfunc="last"))
        verdicts = pd.concat(frames, axis=1).reset_index()
        verdicts = verdicts[verdicts[["score", "severity", "silent", "end_s"]].notna().all(axis=1).to_numpy()]
        verdicts = verdicts.assign(
            window_end_ms=(verdicts["end_s"] * 1000).round().astype(np.int64),
            emitted_at_ms=0,  # any verdict consumed later for the same window replaces the seeded one
            kind=np.where(verdicts["silent"] == 1, "dead_machine", "window"),
            severity=verdicts["severity"].astype(np.int64),
        )
        return self._add_verdicts(verdicts)

    # -- main loop ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume and push until ``stop`` is set; commit offsets only after successful pushes."""
        kafka = self.settings.kafka.as_identity("sinks")
        topics = [kafka.window_stats_topic, kafka.anomalies_topic]
        try:  # subscribing to a missing topic would log an error at every poll
            ensure_topics(kafka, topics=topics)
        except RuntimeError as exc:  # Kafka not up yet: the consumer waits for it, as before
            log.warning("could not check the topics (%s); consuming anyway", exc)
        seeded = self.seed_from_pushgateway()
        if seeded:
            log.info("seeded %d series from the Pushgateway", seeded)
        consumer = make_consumer(kafka, self.settings.prometheus.sink_consumer_group)
        self._next_push = time.monotonic()
        try:
            run_batches(consumer, topics, stop, self)
        finally:
            consumer.close()
            if self._client is not None:
                self._client.close()

    # -- the batch it writes (run_batches polls and commits) ----------------------------------------
    def add(self, messages: list[Message]) -> None:
        """Fold a polled batch into the latest state (pushed at the next write)."""
        if not messages:
            return
        kafka = self.settings.kafka.as_identity("sinks")
        values: dict[str, list[bytes]] = {kafka.window_stats_topic: [], kafka.anomalies_topic: []}
        for message in messages:
            if message.value() is not None:
                values.setdefault(message.topic(), []).append(message.value())
        self.ingest(values[kafka.window_stats_topic])
        self.ingest_anomalies(values[kafka.anomalies_topic])

    def due(self, polled: list[Message]) -> bool:
        return time.monotonic() >= self._next_push

    def write(self, stop: threading.Event, final: bool) -> bool:
        """Push every group; the records folded in so far are committed only if it succeeded."""
        self._next_push = time.monotonic() + self._prom.push_interval_s
        return self.push()


def main() -> None:
    setup_logging()
    stop = stop_event_on_signals()
    settings = get_settings()
    log.info(
        "pushing %s and %s -> %s every %.1f s",
        settings.kafka.window_stats_topic,
        settings.kafka.anomalies_topic,
        settings.prometheus.pushgateway_url,
        settings.prometheus.push_interval_s,
    )
    PushgatewaySink(settings).run(stop)


if __name__ == "__main__":
    main()
