"""The edge's state snapshot: written whole or not at all, read back, unreadable ones said and ignored."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge.state import EdgeSnapshot, load_snapshot, save_snapshot


def test_a_snapshot_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "edge" / "edge-state.json"
    assert load_snapshot(path) is None
    save_snapshot(path, EdgeSnapshot(123, {"pump-1": 7}, {"pump-1": 5_000}))
    save_snapshot(path, EdgeSnapshot(456, {"pump-1": 9, "pump-2": 1}, {"pump-2": 6_000}))
    assert load_snapshot(path) == EdgeSnapshot(456, {"pump-1": 9, "pump-2": 1}, {"pump-2": 6_000})
    assert [p.name for p in path.parent.iterdir()] == ["edge-state.json"]  # no temporary file left


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"saved_at_ms": 1}', b'{"saved_at_ms": "x", "marks": {}}'])
def test_an_unreadable_snapshot_is_reported_and_ignored(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "edge-state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert load_snapshot(path) is None
    assert "cannot read the edge's state snapshot" in caplog.text
