"""The sinks need only the detectors' names: listing them must not import the detectors' heavy libraries.

Each detector module imports sklearn, skl2onnx, onnx, scipy and onnxruntime where it builds, fits, exports or
scores a model (see detectors.base), so the ClickHouse and Pushgateway sinks stay at the size of their own
dependencies (about 160 MiB instead of about 300).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("sklearn", "skl2onnx", "onnx", "onnxruntime", "scipy")

PROBE = f"""
import sys
import detectors
import jobs.alert_publisher, jobs.clickhouse_sink, jobs.pushgateway_sink
from vigil.settings import Settings

settings = Settings(data_dir=sys.argv[1])
jobs.clickhouse_sink.table_specs(settings)
jobs.pushgateway_sink.PushgatewaySink(settings)
assert len(detectors.score_names()) > 1
print(sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r})))
"""


def test_listing_detector_names_imports_no_heavy_library(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert out.stdout.strip() == "[]", f"heavy libraries imported by the sinks: {out.stdout.strip()}"
