"""Vigil's Flink jobs, listed once: the CLI, the local stack and the cluster runner read this table.

Only names, modules and ports: importing it loads no job (the stack and the CLI start jobs as processes
by module name, and must not pay for PyFlink and the scoring UDF's imports to do so). Each job module
holds a :class:`jobs.spec.FlinkJob` built from its entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vigil.settings import Settings


@dataclass(frozen=True)
class JobEntry:
    name: str  # CLI and stack name: `vigil job submit <name>`, service "<name>-job"
    module: str  # started as `python -m <module>`; defines JOB
    pipeline_name: str  # Flink's pipeline.name, and the checkpoint folder
    sql_folder: str  # sql/flink/<folder>/NN_*.sql, run in file-name order
    rest_port: Callable[[Settings], int]  # the job's MiniCluster REST port in local mode
    description: str

    @property
    def service(self) -> str:
        return f"{self.name}-job"

    @property
    def log_folder(self) -> str:
        return f"flink-{self.name}"


FLINK_JOBS: dict[str, JobEntry] = {
    job.name: job
    for job in (
        JobEntry(
            "window-stats",
            "jobs.window_stats",
            "vigil-window-stats",
            "window_stats",
            lambda s: s.flink.rest_port,
            "Flink job: 5-s window statistics (local mode)",
        ),
        JobEntry(
            "anomaly-scoring",
            "jobs.anomaly_scoring",
            "vigil-anomaly-scoring",
            "anomaly_scoring",
            lambda s: s.scoring.rest_port,
            "Flink job: rules + ONNX models -> anomalies (local mode)",
        ),
        JobEntry(
            "fleet-pipeline",
            "jobs.fleet_pipeline",
            "vigil-fleet-pipeline",
            "fleet_pipeline",
            lambda s: s.flink.rest_port,
            "Flink job: windows + rules + models in one job (local mode)",
        ),
        JobEntry(
            "agents",
            "jobs.agents",
            "vigil-agents",
            "agents",
            lambda s: s.agents.rest_port,
            "Flink job: anomaly episodes -> diagnostic, root-cause, maintenance insights (local mode)",
        ),
    )
}
