"""The rendered Alertmanager config and Vigil's alerting rules, checked by the real promtool and amtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.alert_publisher import HEARTBEAT_S
from operations.stack import prometheus_configs
from operations.stack.prometheus_configs import render_configs
from vigil.settings import Settings

# Found the way operations.stack.prometheus_configs finds its binaries: on PATH (the Debian packages `prometheus`,
# which ships promtool, and `prometheus-alertmanager`, which ships amtool).
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
RULE_TESTS = Path(__file__).parent / "alerting_rules_test.yml"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool not installed (apt-get install prometheus-alertmanager)"
)


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def ok(argv: list[str], cwd: Path | None = None) -> str:
    proc = run(argv, cwd)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", alerting={"relay_host": "127.0.0.9", "relay_port": 18999})


@pytest.fixture
def paths(settings: Settings, tmp_path: Path) -> dict[str, Path]:
    return render_configs(settings, tmp_path / "cfg")


def test_alertmanager_config_points_every_receiver_at_the_relay(paths: dict[str, Path], settings: Settings) -> None:
    am = yaml.safe_load(paths["alertmanager"].read_text())
    token_file = settings.relay_token_path.resolve()
    auth = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    assert {r["name"]: r["webhook_configs"] for r in am["receivers"]} == {
        name: [{"url": f"http://127.0.0.9:18999/alertmanager/{name}", "send_resolved": True, "http_config": auth}]
        for name in ("slack", "sms", "email")
    }
    # Rendering created the relay's token, readable by its owner only, in a folder only its owner can list.
    assert len(token_file.read_text().strip()) >= 32
    assert token_file.stat().st_mode & 0o077 == 0 and token_file.parent.stat().st_mode & 0o077 == 0
    route = am["route"]
    assert route["group_by"] == ["alertname", "site"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("1s", "1s", "4h")
    inhibit = {(tuple(r["source_matchers"]), tuple(r["target_matchers"])): r.get("equal") for r in am["inhibit_rules"]}
    site_down = ('alertname="VigilSiteSilent"',)
    machine_alerts = ('alertname=~"VigilEquipmentAnomaly|VigilMachineSilent"',)
    assert inhibit[(site_down, machine_alerts)] == ["site"]
    critical = ('source="vigil-scoring"', 'severity="critical"')
    warning = ('source="vigil-scoring"', 'severity="warning"')
    assert inhibit[(critical, warning)] == ["alertname", "equipment_id", "detector", "sensor"]


def test_timings_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, alerting={"group_wait_s": 0.5, "group_interval_s": 10, "repeat_interval": "1h"}
    )
    route = yaml.safe_load(render_configs(settings, tmp_path / "cfg")["alertmanager"].read_text())["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("500ms", "10s", "1h")


def test_publisher_heartbeat_matches_the_rule_threshold() -> None:
    """VigilAlertPublisherNotPosting's threshold assumes the publisher's heartbeat period."""
    assert prometheus_configs.PUBLISHER_HEARTBEAT_S == HEARTBEAT_S


@needs_amtool
def test_amtool_accepts_the_config_and_routes_by_severity_and_category(paths: dict[str, Path]) -> None:
    config = str(paths["alertmanager"])
    assert "SUCCESS" in ok([AMTOOL, "check-config", config])
    cases = [
        # an equipment anomaly from the publisher, critical: Slack and SMS
        (
            "slack,sms",
            [
                "alertname=VigilEquipmentAnomaly",
                "severity=critical",
                "site=north",
                "source=vigil-scoring",
                "equipment_id=m1",
                "detector=threshold_max",
                "sensor=temp",
            ],
        ),
        ("slack", ["alertname=VigilEquipmentAnomaly", "severity=warning", "site=north", "source=vigil-scoring"]),
        # a whole site silent pages too
        ("slack,sms", ["alertname=VigilSiteSilent", "severity=critical", "category=equipment", "site=north"]),
        # pipeline / self-monitoring: Slack and e-mail, never SMS, whatever the severity
        ("slack,email", ["alertname=VigilPipelineStalled", "severity=critical", "category=pipeline"]),
        ("slack,email", ["alertname=VigilConsumerLagGrowing", "severity=warning", "category=pipeline"]),
    ]
    for receivers, labels in cases:
        out = ok(
            [AMTOOL, "config", "routes", "test", f"--config.file={config}", f"--verify.receivers={receivers}", *labels]
        )
        assert out.strip().splitlines()[0] == receivers, labels
    # --verify.receivers really fails on a mismatch (the checks above can fail).
    wrong = run(
        [
            AMTOOL,
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            "--verify.receivers=slack",
            "alertname=VigilEquipmentAnomaly",
            "severity=critical",
        ]
    )
    assert wrong.returncode != 0


@needs_amtool
def test_generic_webhook_gets_a_copy_of_everything(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, prometheus={"alert_webhook_url": 'http://hooks.example/vigil?x=1&y="2"'})
    config = render_configs(settings, tmp_path / "cfg")["alertmanager"]
    am = yaml.safe_load(config.read_text())
    assert am["route"]["routes"][0] == {"receiver": "webhook", "continue": True}
    webhook = next(r for r in am["receivers"] if r["name"] == "webhook")
    assert webhook["webhook_configs"] == [{"url": 'http://hooks.example/vigil?x=1&y="2"', "send_resolved": True}]
    ok([AMTOOL, "check-config", str(config)])
    out = ok(
        [
            AMTOOL,
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            "alertname=VigilEquipmentAnomaly",
            "severity=critical",
        ]
    )
    assert out.strip().splitlines()[0] == "webhook,slack,sms"


@needs_promtool
def test_promtool_accepts_the_rules(paths: dict[str, Path]) -> None:
    out = ok([PROMTOOL, "check", "rules", str(paths["rules"])])
    assert "SUCCESS: 26 rules found" in out
    text = paths["rules"].read_text()
    assert not re.search(r"<<\w+>>", text)
    assert 'vigil_kafka_topic_end_offset{topic="vigil.dead-letter"}' in text  # settings.kafka.dead_letter_topic


@needs_promtool
def test_rules_fire_for_site_silence_stalled_scoring_lag_clickhouse_and_publisher(paths: dict[str, Path]) -> None:
    """tests/unit/alerting_rules_test.yml: input series -> expected alerts (and expected silence)."""
    rules_dir = paths["rules"].parent
    shutil.copy(RULE_TESTS, rules_dir / RULE_TESTS.name)
    out = ok([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=rules_dir)
    assert "SUCCESS" in out
    # The same tests against a rule with a different threshold fail: they pin the rendered values.
    (rules_dir / "vigil.rules.yml").write_text(paths["rules"].read_text().replace("> 45", "> 600"))
    assert run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=rules_dir).returncode != 0
