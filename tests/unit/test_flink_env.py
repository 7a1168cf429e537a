"""Checkpoint bookkeeping of the Flink jobs: resume only state the current plan can read."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from jobs.flink_env import latest_checkpoint, plan_fingerprint
from jobs.window_stats import JOB
from tests.conftest import job_settings
from vigil.settings import WindowSettings


def _checkpoint(root: Path, job_id: str, n: int, mtime: float, complete: bool = True) -> Path:
    path = root / job_id / f"chk-{n}"
    path.mkdir(parents=True)
    if complete:
        (path / "_metadata").write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_latest_complete_checkpoint_wins(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, "job-a", 3, 1000)
    newest = _checkpoint(tmp_path, "job-b", 1, 2000)
    _checkpoint(tmp_path, "job-b", 2, 3000, complete=False)  # still being written: never resumed
    assert latest_checkpoint(tmp_path) == newest


def test_plan_fingerprint_follows_the_sql_the_job_runs() -> None:
    base = job_settings()
    same = plan_fingerprint(JOB.statements(base).statements)
    assert same == plan_fingerprint(JOB.statements(job_settings()).statements)
    wider = base.model_copy(update={"window": WindowSettings(size_ms=10_000)})
    assert plan_fingerprint(JOB.statements(wider).statements) != same
    # A rotated Kafka password is the same plan (the job keeps its state), and never part of the name.
    rotated = base.model_copy(update={"kafka": base.kafka.model_copy(update={"sasl_password": SecretStr("new")})})
    statements = JOB.statements(rotated).statements
    assert plan_fingerprint(statements) == same and any('password="new"' in s for s in statements)


def test_plan_fingerprint_ignores_comments_but_not_the_python_functions() -> None:
    statements = JOB.statements(job_settings()).statements
    same = plan_fingerprint(statements)
    commented = [f"-- a comment edited\n{statement}" for statement in statements]
    assert plan_fingerprint(commented) == same
    assert plan_fingerprint(statements, "python function F RETURNS INT") != same
    assert plan_fingerprint(statements[:-1]) != same
