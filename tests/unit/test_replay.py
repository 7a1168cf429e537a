"""vigil replay's pieces that need no server: reading recordings, cutting history, timing batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from operations.replay import ReplayMachine, read_recording, sensor_name, split_leading, split_recording

SKAB_ROWS = """datetime;Accelerometer1RMS;Volume Flow RateRMS;anomaly;changepoint
2020-03-09 10:14:36;3.0;32.0;1.0;0.0
2020-03-09 10:14:33;0.5;32.0;0.0;0.0
2020-03-09 10:14:34;1.0;31.0;0.0;0.0
2020-03-09 10:14:35;2.0;32.0;1.0;1.0
2020-03-09 10:14:37;4.0;33.0;0.0;0.0
2020-03-09 10:14:38;5.0;33.0;1.0;0.0
"""


def skab_file(tmp_path: Path, text: str = SKAB_ROWS) -> Path:
    path = tmp_path / "7.csv"
    path.write_text(text)
    return path


def test_a_skab_file_is_read_in_time_order_with_its_anomaly_runs(tmp_path: Path) -> None:
    rec = read_recording(skab_file(tmp_path), "skab")
    assert rec.name == "7"
    assert rec.sensors == ("accelerometer1rms", "volume_flow_raterms")
    assert rec.offsets_ms.tolist() == [0, 1000, 2000, 3000, 4000, 5000]
    assert rec.values[:, 0].tolist() == [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert rec.anomalies == ((2000, 3000), (5000, 5000))


def test_a_nab_file_takes_its_windows_from_the_windows_file(tmp_path: Path) -> None:
    folder = tmp_path / "realX"
    folder.mkdir()
    rows = "\n".join(f"2015-01-01 00:{m:02d}:00,{m}.5" for m in range(0, 50, 5))
    (folder / "cpu.csv").write_text("timestamp,value\n" + rows + "\n")
    windows = tmp_path / "windows.json"
    windows.write_text('{"realX/cpu.csv": [["2015-01-01 00:10:00.000000", "2015-01-01 00:20:00.000000"]]}')
    rec = read_recording(folder / "cpu.csv", "nab", windows)
    assert rec.sensors == ("value",)
    assert rec.offsets_ms[-1] == 45 * 60_000
    assert rec.anomalies == ((10 * 60_000, 20 * 60_000),)


def test_bad_recordings_are_refused_with_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-numeric"):
        read_recording(skab_file(tmp_path, SKAB_ROWS.replace(";3.0;", ";;")), "skab")
    with pytest.raises(ValueError, match="';'-separated"):
        read_recording(skab_file(tmp_path, SKAB_ROWS.replace(";", ",")), "skab")
    with pytest.raises(ValueError, match="unknown format"):
        read_recording(skab_file(tmp_path), "csv")
    with pytest.raises(ValueError, match="empty sensor name"):
        sensor_name(" -- ")


def test_history_is_cut_into_consecutive_parts_that_each_start_at_zero(tmp_path: Path) -> None:
    rec = read_recording(skab_file(tmp_path), "skab")
    parts = split_recording(rec, 3)
    assert [p.name for p in parts] == ["7-1", "7-2", "7-3"]
    assert all(p.offsets_ms[0] == 0 and p.anomalies == () for p in parts)
    assert np.concatenate([p.values for p in parts]).tolist() == rec.values.tolist()


def test_a_batch_carries_the_rows_due_once_and_speed_compresses_time(tmp_path: Path) -> None:
    rec = read_recording(skab_file(tmp_path), "skab")
    m = ReplayMachine(rec, "skab-7", "replay", "skab_replay", start_ms=1_000_000, speed=2.0)
    assert m.event_ms.tolist() == [1_000_000, 1_000_500, 1_001_000, 1_001_500, 1_002_000, 1_002_500]
    assert m.anomalies_ms() == [(1_001_000, 1_001_500), (1_002_500, 1_002_500)]
    assert m.batch(1_000_000, 0) is None  # nothing is due before the first row
    first = m.batch(1_001_000, 1_001_000)
    assert first is not None and first.sequence == 1
    assert [(s.sensor, list(s.timestamps_ms), list(s.values)) for s in first.sensors] == [
        ("accelerometer1rms", [1_000_000, 1_000_500], [0.5, 1.0]),
        ("volume_flow_raterms", [1_000_000, 1_000_500], [32.0, 31.0]),
    ]
    assert m.batch(1_001_000, 1_001_000) is None  # sent rows are never sent again
    rest = m.batch(10**12, 0)
    assert rest is not None and rest.sequence == 2 and len(rest.sensors[0].values) == 4
    assert m.done


def test_leading_rows_become_history_and_the_rest_is_replayed_from_zero(tmp_path: Path) -> None:
    rec = read_recording(skab_file(tmp_path), "skab")
    head, tail = split_leading(rec, 5)  # cut at the first labelled row (offset 2000): two rows of history
    assert head.values[:, 0].tolist() == [0.5, 1.0] and head.anomalies == ()
    assert tail.offsets_ms.tolist() == [0, 1000, 2000, 3000] and tail.anomalies == ((0, 1000), (3000, 3000))
    with pytest.raises(ValueError, match="at least two before its first labelled anomaly"):
        split_leading(rec, 1)
