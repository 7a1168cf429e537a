"""Ground-truth fault labels as JSON lines, so detectors can be scored against what was injected.

One line per fault, written when the fault first affects a tick (a fault scheduled past the end
of a run is never written). The file is appended to and flushed after every write, so a reader
can follow a live simulation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import orjson

from edge.simulator.faults import FaultLabel

__all__ = ["FaultLabel", "GroundTruthWriter", "read_ground_truth"]


class GroundTruthWriter:
    """Appends :class:`FaultLabel` records to a JSONL file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._lock = threading.Lock()
        self.written = 0

    def write(self, labels: Iterable[FaultLabel]) -> int:
        data = b"".join(orjson.dumps(label.to_dict()) + b"\n" for label in labels)
        if not data:
            return 0
        with self._lock:
            self._file.write(data)
            self._file.flush()
            n = data.count(b"\n")
            self.written += n
        return n

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> GroundTruthWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_ground_truth(path: Path | str) -> list[FaultLabel]:
    """All labels in a ground-truth file, in the order written (a missing file means no faults)."""
    path = Path(path)
    if not path.exists():
        return []
    labels = []
    with path.open("rb") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                labels.append(FaultLabel.from_dict(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, ValueError) as exc:
                raise ValueError(
                    f"{path}:{lineno} is not a fault label ({exc}); the file may be truncated mid-write "
                    "or not a ground-truth file"
                ) from exc
    return labels
