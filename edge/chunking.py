"""Split a validated batch into window-aligned telemetry records (the Kafka telemetry contract).

Every record holds the samples of ONE machine in ONE tumbling window (``window_start = ts - ts %
size_ms``), all sensors of that window together. Flink can then assign a whole record to a
single window, and a late record never straddles two windows.

``event_time_ms`` is the record's NEWEST sample: the watermark then follows the newest data a
machine has reported, so a window closes one batch interval sooner than with the oldest sample,
and the record still lands in the right window (every sample of it is in that window).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from edge.proto import telemetry_pb2
from edge.validation import SensorArrays

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def batch_to_records(
    batch: telemetry_pb2.ReadingBatch,
    arrays: Sequence[SensorArrays],
    window_size_ms: int,
    ingested_at_ms: int,
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` records, one per window the batch touches, oldest window first.

    Within a record each sensor keeps its samples in their original order (stable sort by
    window); values are float64 and serialised by orjson, which round-trips them exactly.
    """
    if not arrays:
        return []
    # Per sensor: samples grouped by window (stable, so order inside a window is kept).
    grouped: list[tuple[SensorArrays, np.ndarray, np.ndarray, np.ndarray]] = []
    for series in arrays:
        win = series.ts - series.ts % window_size_ms
        if win.size > 1 and not (win[1:] >= win[:-1]).all():
            order = np.argsort(win, kind="stable")
            grouped.append((series, win[order], series.ts[order], series.v[order]))
        else:
            grouped.append((series, win, series.ts, series.v))
    windows = np.unique(np.concatenate([g[1] for g in grouped]))
    # bounds[i, k]: first index of window k in sensor i's sorted window ids; k = len(windows) is the end.
    bounds = [np.searchsorted(win, windows, side="left").tolist() + [win.size] for _, win, _, _ in grouped]

    key = batch.equipment_id.encode()
    head = {
        "equipment_id": batch.equipment_id,
        "site": batch.site,
        "equipment_type": batch.equipment_type,
        "gateway_id": batch.gateway_id,
        "sequence": batch.sequence,
    }
    records: list[tuple[bytes, bytes]] = []
    for k, window_start in enumerate(windows.tolist()):
        sensors = []
        event_time = None
        for (series, _, ts, v), b in zip(grouped, bounds, strict=True):
            lo, hi = b[k], b[k + 1]
            if lo == hi:
                continue
            chunk_ts = ts[lo:hi]
            newest = int(chunk_ts.max())
            event_time = newest if event_time is None or newest > event_time else event_time
            sensors.append({"sensor": series.sensor, "unit": series.unit, "ts": chunk_ts, "v": v[lo:hi]})
        record = head | {
            "chunk_start_ms": window_start,
            "event_time_ms": event_time,
            "ingested_at_ms": ingested_at_ms,
            "sensors": sensors,
        }
        records.append((key, orjson.dumps(record, option=_JSON_OPTS)))
    return records
