"""The `vigil` command runs its read-only subcommands end to end (typer's runner, real code paths)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from operations.cli import app
from operations.evaluate.nab_eval import parse_params
from tests.conftest import stack_test_settings
from tests.unit.skab_files import write_skab_file
from vigil.settings import PROJECT_ROOT, get_settings

SHARED = PROJECT_ROOT.parent / "shared" / "data"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _private_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A data dir and free ports of its own, so a stack running on this machine does not show up."""
    for key, value in stack_test_settings(tmp_path).to_env().items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_stack_status_lists_every_service_as_stopped() -> None:
    result = runner.invoke(app, ["stack", "status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in (
        "kafka",
        "clickhouse",
        "prometheus",
        "pushgateway",
        "alertmanager",
        "edge",
        "window-stats-job",
        "notify-relay",
        "alert-publisher",
        "saas-standin",
        "kafka-lag",
    ):
        assert name in result.output
    assert "healthy" not in result.output.replace("not healthy", "")


@pytest.mark.skipif(not (SHARED / "nab").is_dir(), reason="shared NAB data not present")
def test_evaluate_nab_prints_all_three_profiles() -> None:
    result = runner.invoke(app, ["evaluate", "--dataset", "nab", "--threshold", "4"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for profile in ("standard", "reward_low_FP", "reward_low_FN"):
        assert profile in result.output


def test_evaluate_nab_detector_parameters_are_k_equals_number() -> None:
    assert parse_params(["rows=50", "alpha=0.5", "ridge=1e6"]) == {"rows": 50, "alpha": 0.5, "ridge": 1e6}
    result = runner.invoke(app, ["evaluate", "--dataset", "nab", "--param", "alpha"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "'alpha' is not K=V" in result.output
    result = runner.invoke(app, ["evaluate", "--dataset", "nab", "--param", "alpha=x"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "'x' is not a number" in result.output


def test_evaluate_refuses_an_unknown_dataset_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--dataset", "skab", "--data-dir", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "no data folder" in result.output


def test_evaluate_skab_writes_results_under_the_skab_protocol_and_refuses_anomaly_free_levels(
    tmp_path: Path,
) -> None:
    data = tmp_path / "skab"
    write_skab_file(data / "valve7" / "1.csv", 520, 450, seed=1)  # 400 training rows, as SKAB's protocol has it
    out = tmp_path / "results"
    args = ["evaluate", "--dataset", "skab", "--data-dir", str(data), "--detector", "pca_t2q"]
    result = runner.invoke(app, [*args, "--results-dir", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "SKAB protocol" in result.output
    assert (out / "skab" / "valve7" / "1.csv").exists() and (out / "skab" / "thresholds.json").exists()
    refused = runner.invoke(app, [*args, "--limit", "anomaly-free"], env={"COLUMNS": "200"})
    assert refused.exit_code == 1 and "anomaly-free.csv cannot set the alarm level" in refused.output
    several = runner.invoke(app, ["evaluate", "--dataset", "skab", "--data-dir", str(data), "--results-dir", str(out)])
    assert several.exit_code == 1 and "pass --detector" in several.output
