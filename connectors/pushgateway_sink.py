"""Hot path: latest window statistics per machine and sensor -> Prometheus Pushgateway.

Consumes ``settings.kafka.window_stats_topic`` (group ``settings.prometheus.sink_consumer_group``), keeps
the newest window per (equipment_id, sensor) in one pandas DataFrame, and every
``settings.prometheus.push_interval_s`` PUTs the Prometheus text exposition to the Pushgateway,
one group per site (``/metrics/job/vigil_window_stats/site/<site>``) so a PUT replaces exactly
that site's series.

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

Run: ``python -m connectors.pushgateway_sink`` (until SIGTERM/SIGINT).
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import requests
from confluent_kafka import KafkaError, KafkaException
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from connectors.contracts import WINDOW_STATS_JSON_SCHEMA, WINDOW_STATS_LABELS, WINDOW_STATS_VALUES
from connectors.kafka import consume_batches, make_consumer
from vigil.settings import Settings, get_settings
from vigil.signals import stop_event_on_signals

log = logging.getLogger(__name__)

WINDOW_JOB = "vigil_window_stats"
SINK_JOB = "vigil_pushgateway_sink"
HTTP_TIMEOUT = (2.0, 10.0)  # connect, read (seconds)

_STATS = WINDOW_STATS_VALUES
_STRINGS = WINDOW_STATS_LABELS
# The contract's fields this sink needs; every statistic as float64 (a gauge value).
_SCHEMA = pa.schema(
    [WINDOW_STATS_JSON_SCHEMA.field(name) for name in (*_STRINGS, "window_start_ms", "window_end_ms")]
    + [(stat, pa.float64()) for stat in _STATS]
)
_STATE_COLUMNS = [*_STRINGS, "window_end_ms", *_STATS, "series_labels", "machine_labels"]
_SAFE_PATH_VALUE = re.compile(r"^[A-Za-z0-9_.:-]+$")

_HELP = {
    "avg": "Mean of the sensor over the machine's latest window.",
    "stddev": "Population standard deviation of the sensor over the latest window.",
    "min": "Minimum of the sensor over the latest window.",
    "max": "Maximum of the sensor over the latest window.",
    "count": "Number of samples of the sensor in the latest window.",
}


@dataclass(frozen=True)
class SinkCounters:
    """A consistent snapshot of the sink's progress (safe to read from another thread)."""

    pushes: int = 0  # successful push rounds (all sites + pipeline group)
    failures: int = 0  # failed push rounds
    series_pushed: int = 0  # series in the last successful round
    last_push_ts: float = 0.0  # wall clock of the last successful round (0 = never)
    windows_consumed: int = 0
    bad_records: int = 0  # records skipped as unparseable or missing key fields


def escape_label_values(values: pd.Series) -> pd.Series:
    r"""Escape for the text format: backslash, double quote and newline (``\\``, ``\"``, ``\n``)."""
    return (
        values.fillna("")
        .str.replace("\\", "\\\\", regex=False)
        .str.replace('"', '\\"', regex=False)
        .str.replace("\n", "\\n", regex=False)
    )


def format_values(values: pd.Series | np.ndarray) -> np.ndarray:
    """Floats as the text format spells them: shortest round-trip repr, NaN, +Inf, -Inf."""
    arr = np.asarray(values, dtype=np.float64)
    text = pc.cast(pa.array(arr, from_pandas=False), pa.string()).to_numpy(zero_copy_only=False)
    if not np.isfinite(arr).all():
        text = text.astype(object)
        text[np.isnan(arr)] = "NaN"
        text[np.isposinf(arr)] = "+Inf"
        text[np.isneginf(arr)] = "-Inf"
    return text


def grouping_path(job: str, **labels: str) -> str:
    """Pushgateway URL path for a grouping key; unsafe values (``/``, empty, ...) go base64."""
    parts = [f"/metrics/job/{job}"]
    for name, value in labels.items():
        if _SAFE_PATH_VALUE.match(value):
            parts.append(f"{name}/{value}")
        else:
            encoded = base64.urlsafe_b64encode(value.encode()).decode() or "="
            parts.append(f"{name}@base64/{encoded}")
    return "/".join(parts)


def _family(name: str, kind: str, help_text: str, lines: pd.Series | Sequence[str]) -> str:
    body = lines.str.cat(sep="\n") if isinstance(lines, pd.Series) else "\n".join(lines)
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{body}\n"


def _empty_state() -> pd.DataFrame:
    frame = pd.DataFrame({col: pd.Series(dtype=object) for col in _STATE_COLUMNS})
    frame["window_end_ms"] = frame["window_end_ms"].astype(np.int64)
    for stat in _STATS:
        frame[stat] = frame[stat].astype(np.float64)
    return frame


def _session() -> requests.Session:
    retry = Retry(
        total=3,
        backoff_factor=0.3,  # 0.3, 0.6, 1.2 s
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "PUT", "DELETE"}),
        raise_on_status=False,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


class PushgatewaySink:
    """Kafka window-stats -> Pushgateway gauges. Thread-safe counters via :attr:`counters`."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._prom = settings.prometheus
        self._stats = list(dict.fromkeys(self._prom.exported_stats))
        self._state = _empty_state()
        self._pending: list[pd.DataFrame] = []
        self._pushed_sites: set[str] = set()
        self._lock = threading.Lock()
        self._counters = SinkCounters()
        self._rendered_series = 0
        self._session = _session()

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

    # -- ingestion ----------------------------------------------------------------------
    def ingest(self, values: Sequence[bytes]) -> int:
        """Parse one Kafka batch of window-stats JSON values; returns the number of valid records."""
        if not values:
            return 0
        frame = self._parse(values)
        bad = len(values) - len(frame)
        key_ok = frame["equipment_id"].notna() & frame["sensor"].notna() & frame["site"].notna()
        key_ok &= frame["window_end_ms"].notna()
        if not key_ok.all():
            frame = frame[key_ok.to_numpy()]
            bad += int((~key_ok).sum())
        if bad:
            log.warning("skipped %d window-stats records without equipment_id/site/sensor/window_end_ms "
                        "or not JSON; fix the producer (Flink job) or inspect the topic", bad)
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
        eq, et = escape_label_values(frame["equipment_id"]), escape_label_values(frame["equipment_type"])
        sensor, unit = escape_label_values(frame["sensor"]), escape_label_values(frame["unit"])
        machine = 'equipment_id="' + eq + '",equipment_type="' + et + '"'
        frame["machine_labels"] = machine
        frame["series_labels"] = machine + ',sensor="' + sensor + '",unit="' + unit + '"'
        self._pending.append(frame.reindex(columns=_STATE_COLUMNS))
        return len(frame)

    @staticmethod
    def _parse(values: Sequence[bytes]) -> pd.DataFrame:
        """One pyarrow JSON parse per batch; per-message orjson only to isolate a bad record."""
        options = pa_json.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")
        try:
            table = pa_json.read_json(io.BytesIO(b"\n".join(values)), parse_options=options)
            return table.select(_SCHEMA.names).to_pandas()
        except pa.ArrowInvalid:
            rows = []
            for value in values:
                try:
                    row = orjson.loads(value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
            frame = pd.DataFrame(rows, columns=_SCHEMA.names)
            for name in _STRINGS:
                frame[name] = frame[name].where(frame[name].map(lambda v: isinstance(v, str)), None)
            for name in ("window_end_ms", *_STATS):
                frame[name] = pd.to_numeric(frame[name], errors="coerce")
            return frame

    def _merge(self, now: float) -> pd.DataFrame:
        """Fold pending batches into the state: newest window per series wins; expire old series."""
        if self._pending:
            combined = pd.concat([self._state, *self._pending], ignore_index=True)
            self._pending.clear()
            combined = combined.sort_values("window_end_ms", kind="stable")
            combined = combined[~combined.duplicated(["equipment_id", "sensor"], keep="last")]
        else:
            combined = self._state
        cutoff_ms = (now - self._prom.series_ttl_s) * 1000.0
        live = combined[combined["window_end_ms"].to_numpy() >= cutoff_ms]
        dropped = len(combined) - len(live)
        if dropped:
            log.info("expired %d series silent for more than %.0f s", dropped, self._prom.series_ttl_s)
        self._state = live.sort_values(["site", "equipment_id", "sensor"], kind="stable", ignore_index=True)
        return self._state

    # -- exposition ---------------------------------------------------------------------
    def render(self, now: float | None = None) -> dict[str, str]:
        """Merge pending windows and return the text exposition per site (only live series)."""
        now = self._clock() if now is None else now
        state = self._merge(now)
        if state.empty:
            self._rendered_series = 0
            return {}
        silent_ms = (now - self._prom.machine_silent_after_s) * 1000.0
        machines = (
            state.groupby(["site", "equipment_id"], sort=True)
            .agg(machine_labels=("machine_labels", "last"), window_end_ms=("window_end_ms", "max"))
            .reset_index()
        )
        machines["reporting"] = machines["window_end_ms"] >= silent_ms
        reporting = machines.groupby("site", sort=True)["reporting"].sum()

        families = {
            stat: f"vigil_window_{stat}{{" + state["series_labels"] + "} " + format_values(state[stat])
            for stat in self._stats
        }
        last_end = (
            "vigil_equipment_last_window_end_seconds{" + machines["machine_labels"] + "} "
            + format_values(machines["window_end_ms"] / 1000.0)
        )
        series_rows = state.groupby("site", sort=True).indices
        machine_rows = machines.groupby("site", sort=True).indices
        texts: dict[str, str] = {}
        for site, rows in series_rows.items():
            parts = [
                _family(f"vigil_window_{stat}", "gauge", _HELP[stat], families[stat].iloc[rows])
                for stat in self._stats
            ]
            parts.append(_family(
                "vigil_equipment_last_window_end_seconds", "gauge",
                "End (event time, Unix seconds) of the machine's latest window.",
                last_end.iloc[machine_rows[site]],
            ))
            parts.append(_family(
                "vigil_site_machines_reporting", "gauge",
                "Machines whose latest window is newer than machine_silent_after_s.",
                [f"vigil_site_machines_reporting {int(reporting[site])}"],
            ))
            texts[site] = "".join(parts)
        self._rendered_series = len(state) * len(self._stats) + len(machines) + len(texts)
        return texts

    def render_pipeline(self) -> str:
        c = self.counters
        return "".join([
            _family("vigil_sink_last_push_timestamp_seconds", "gauge",
                    "Unix time of the sink's last successful push.",
                    [f"vigil_sink_last_push_timestamp_seconds {format_values([c.last_push_ts])[0]}"]),
            _family("vigil_sink_windows_consumed_total", "counter",
                    "Window-stats records consumed from Kafka since the sink started.",
                    [f"vigil_sink_windows_consumed_total {c.windows_consumed}"]),
            _family("vigil_sink_push_failures_total", "counter",
                    "Push rounds that failed since the sink started.",
                    [f"vigil_sink_push_failures_total {c.failures}"]),
            _family("vigil_sink_bad_records_total", "counter",
                    "Window-stats records skipped as invalid since the sink started.",
                    [f"vigil_sink_bad_records_total {c.bad_records}"]),
            _family("vigil_sink_series_pushed", "gauge",
                    "Series in the last successful push.",
                    [f"vigil_sink_series_pushed {c.series_pushed}"]),
        ])

    # -- pushing ------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: str | None = None) -> str | None:
        """Returns None on success, else what went wrong (retries already done by the session)."""
        url = self._prom.pushgateway_url + path
        try:
            resp = self._session.request(
                method, url, data=body.encode() if body is not None else None, timeout=HTTP_TIMEOUT,
                headers={"Content-Type": "text/plain; version=0.0.4"},
            )
        except requests.RequestException as exc:
            return f"{method} {url}: {exc}"
        if resp.status_code >= 300:
            return f"{method} {url}: HTTP {resp.status_code} {resp.text.strip()[:500]}"
        return None

    def push(self, now: float | None = None) -> bool:
        """One push round: PUT every live site, DELETE emptied sites, then the sink's own group.

        Never raises on HTTP trouble: failures are logged and counted, and the next round
        retries with the then-current state. Returns whether the window gauges (not the sink's
        own group) are in the Pushgateway, i.e. whether consumed offsets may be committed.
        """
        now = self._clock() if now is None else now
        texts = self.render(now)
        errors = [self._request("PUT", grouping_path(WINDOW_JOB, site=site), text)
                  for site, text in texts.items()]
        errors += [self._request("DELETE", grouping_path(WINDOW_JOB, site=site))
                   for site in sorted(self._pushed_sites - texts.keys())]
        errors = [e for e in errors if e]
        if errors:
            self._count(failures=1)
        else:
            self._pushed_sites = set(texts)
            self._count(pushes=1)
            self._set(series_pushed=self._rendered_series, last_push_ts=now)
        pipeline_error = self._request("PUT", grouping_path(SINK_JOB), self.render_pipeline())
        if pipeline_error and not errors:
            self._count(failures=1)
        if errors or pipeline_error:
            log.error("push to Pushgateway %s failed (%d failed rounds so far; is it running?): %s",
                      self._prom.pushgateway_url, self.counters.failures,
                      "; ".join([*errors, pipeline_error or ""]).strip("; "))
        return not errors

    def seed_from_pushgateway(self) -> int:
        """Load the series this sink pushed before a restart; returns how many. Best effort."""
        try:
            resp = self._session.get(self._prom.pushgateway_url + "/api/v1/metrics", timeout=HTTP_TIMEOUT)
            resp.raise_for_status()
            groups = resp.json()["data"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            log.warning("could not read existing series from the Pushgateway (%s); starting empty", exc)
            return 0
        values: dict[str, list[dict]] = {stat: [] for stat in self._stats}
        ends: list[dict] = []
        for group in groups:
            if group.get("labels", {}).get("job") != WINDOW_JOB:
                continue
            self._pushed_sites.add(group["labels"].get("site", ""))
            for stat in self._stats:
                for metric in group.get(f"vigil_window_{stat}", {}).get("metrics", []):
                    values[stat].append({**metric["labels"], stat: float(metric["value"])})
            for metric in group.get("vigil_equipment_last_window_end_seconds", {}).get("metrics", []):
                ends.append({**metric["labels"], "end_s": float(metric["value"])})
        if not ends or not any(values.values()):
            return 0
        key = ["site", "equipment_id", "equipment_type", "sensor", "unit"]
        frames = [pd.DataFrame(rows).reindex(columns=[*key, stat]).set_index(key)
                  for stat, rows in values.items() if rows]
        series = pd.concat(frames, axis=1).reset_index()
        end = pd.DataFrame(ends).groupby("equipment_id")["end_s"].max()
        series["window_end_ms"] = (series["equipment_id"].map(end) * 1000).round()
        series = series[series["window_end_ms"].notna()]
        return self._add(series)

    # -- main loop ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume and push until ``stop`` is set; commit offsets only after successful pushes."""
        seeded = self.seed_from_pushgateway()
        if seeded:
            log.info("seeded %d series from the Pushgateway", seeded)
        consumer = make_consumer(self.settings.kafka, self.settings.prometheus.sink_consumer_group)
        uncommitted = False
        next_push = time.monotonic()
        try:
            for batch in consume_batches(consumer, [self.settings.kafka.window_stats_topic], stop):
                if batch:
                    self.ingest([m.value() for m in batch if m.value() is not None])
                    uncommitted = True
                if time.monotonic() >= next_push:
                    next_push = time.monotonic() + self._prom.push_interval_s
                    if self.push() and uncommitted:
                        uncommitted = not self._commit(consumer)
            if self.push() and uncommitted:  # final round so a clean stop loses nothing
                self._commit(consumer)
        finally:
            consumer.close()
            self._session.close()

    @staticmethod
    def _commit(consumer) -> bool:
        try:
            consumer.commit(asynchronous=False)
            return True
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError._NO_OFFSET:
                return True
            log.warning("offset commit failed (%s); the windows will be re-read and re-pushed", exc)
            return False


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = stop_event_on_signals()
    settings = get_settings()
    log.info("pushing %s -> %s every %.1f s", settings.kafka.window_stats_topic,
             settings.prometheus.pushgateway_url, settings.prometheus.push_interval_s)
    PushgatewaySink(settings).run(stop)


if __name__ == "__main__":
    main()
