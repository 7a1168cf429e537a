"""Rendered hot-path configs are valid for the real tools, and the alert rules fire when they should."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest
import yaml

from operations.stack.prometheus_configs import (
    alertmanager_argv,
    health_urls,
    prometheus_argv,
    pushgateway_argv,
    render_configs,
)
from vigil.settings import Settings

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")


def run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        prometheus={
            "prometheus_port": 29090,
            "pushgateway_port": 29091,
            "alertmanager_port": 29093,
            "scrape_interval_s": 2,
        },
    )


def test_render_fills_settings_into_configs(settings: Settings, tmp_path: Path) -> None:
    paths = render_configs(settings, tmp_path / "cfg")
    prom = yaml.safe_load(paths["prometheus"].read_text())
    assert prom["global"]["scrape_interval"] == "2s"
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["127.0.0.1:29091"]
    assert jobs["vigil_edge"]["static_configs"][0]["targets"] == ["127.0.0.1:15052"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:29093"]
    am = yaml.safe_load(paths["alertmanager"].read_text())
    assert am["route"]["group_by"] == ["alertname", "site"]
    # Every receiver is the notification relay; no generic webhook receiver without alert_webhook_url.
    assert [r["name"] for r in am["receivers"]] == ["slack", "sms", "email"]
    assert am["receivers"][0]["webhook_configs"][0]["url"] == "http://127.0.0.1:18090/alertmanager/slack"
    assert not re.search(r"<<\w+>>", paths["rules"].read_text())
    assert "> 60" in paths["rules"].read_text()  # pipeline_stall_after_s


def test_webhook_receiver(tmp_path: Path) -> None:
    """alert_webhook_url adds a generic webhook receiver that gets a copy of every alert (first route)."""
    settings = Settings(data_dir=tmp_path, prometheus={"alert_webhook_url": "http://hooks.example/vigil?x=1"})
    am = yaml.safe_load(render_configs(settings, tmp_path / "cfg")["alertmanager"].read_text())
    assert am["receivers"][-1] == {
        "name": "webhook",
        "webhook_configs": [{"url": "http://hooks.example/vigil?x=1", "send_resolved": True}],
    }
    assert am["route"]["routes"][0] == {"receiver": "webhook", "continue": True}
    if AMTOOL:
        run([AMTOOL, "check-config", str(tmp_path / "cfg" / "alertmanager.yml")])


def test_argv_listen_on_settings_host_and_ports(settings: Settings, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    assert "--web.listen-address=127.0.0.1:29090" in prometheus_argv(settings, cfg)
    assert f"--storage.tsdb.path={settings.data_dir / 'prometheus' / 'tsdb'}" in prometheus_argv(settings, cfg)
    assert "--web.listen-address=127.0.0.1:29091" in pushgateway_argv(settings, cfg)
    assert "--cluster.listen-address=" in alertmanager_argv(settings, cfg)
    assert health_urls(settings)["alertmanager"] == "https://127.0.0.1:29093/-/ready"
    # TLS and basic auth on all three; nobody stops Prometheus or deletes its series over HTTP.
    for argv in (prometheus_argv(settings, cfg), pushgateway_argv(settings, cfg), alertmanager_argv(settings, cfg)):
        assert f"--web.config.file={cfg / 'web.yml'}" in argv
        assert not [flag for flag in argv if "enable-lifecycle" in flag or "enable-admin-api" in flag]


def test_web_config_requires_tls13_and_the_password_file(settings: Settings, tmp_path: Path) -> None:
    paths = render_configs(settings, tmp_path / "cfg")
    web = yaml.safe_load(paths["web"].read_text())
    assert paths["web"].stat().st_mode & 0o777 == 0o600
    assert web["tls_server_config"]["min_version"] == "TLS13"
    assert Path(web["tls_server_config"]["cert_file"]) == settings.monitoring_cert_path.resolve()
    assert settings.monitoring_key_path.stat().st_mode & 0o777 == 0o600
    password = settings.monitoring_password_path.read_text().strip()
    assert len(password) >= 32 and settings.monitoring_password_path.stat().st_mode & 0o777 == 0o600
    hashed = web["basic_auth_users"]["vigil"]
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    assert not bcrypt.checkpw(b"not-the-password", hashed.encode())
    assert password not in paths["web"].read_text() + paths["prometheus"].read_text()
    # Prometheus reaches Alertmanager and scrapes the three with the CA and the password file, not the password.
    prom = yaml.safe_load(paths["prometheus"].read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    for client in (prom["alerting"]["alertmanagers"][0], jobs["pushgateway"], jobs["prometheus"], jobs["alertmanager"]):
        assert client["scheme"] == "https"
        assert client["tls_config"] == {"ca_file": str(settings.monitoring_ca_path.resolve())}
        assert client["basic_auth"] == {
            "username": "vigil",
            "password_file": str(settings.monitoring_password_path.resolve()),
        }
    assert "scheme" not in jobs["vigil_edge"]
    if PROMTOOL:
        run([PROMTOOL, "check", "web-config", str(paths["web"])])


def test_web_config_off_renders_plain_http(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", prometheus={"tls": False, "basic_auth": False})
    paths = render_configs(settings, tmp_path / "cfg")
    assert "web" not in paths
    assert not [f for f in prometheus_argv(settings, tmp_path / "cfg") if f.startswith("--web.config.file")]
    assert settings.prometheus.prometheus_url.startswith("http://")
    prom = yaml.safe_load(paths["prometheus"].read_text())
    assert prom["alerting"]["alertmanagers"][0]["scheme"] == "http"
    assert "basic_auth" not in prom["scrape_configs"][0]


@pytest.mark.skipif(PROMTOOL is None or AMTOOL is None, reason="promtool/amtool not installed")
def test_promtool_and_amtool_accept_rendered_configs(settings: Settings, tmp_path: Path) -> None:
    paths = render_configs(settings, tmp_path / "cfg")
    out = run([PROMTOOL, "check", "config", str(paths["prometheus"])])
    assert "1 rule files found" in out
    assert "SUCCESS: 26 rules found" in run([PROMTOOL, "check", "rules", str(paths["rules"])])
    run([AMTOOL, "check-config", str(paths["alertmanager"])])


RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  # m1 reports every minute; m2 stopped after minute 2 -> only m2 is silent (> 120 s).
  - interval: 1m
    input_series:
      - series: 'vigil_equipment_last_window_end_seconds{{job="vigil_window_stats",
          site="north",equipment_id="m1",equipment_type="pump"}}'
        values: '0+60x15'
      - series: 'vigil_equipment_last_window_end_seconds{{job="vigil_window_stats",
          site="north",equipment_id="m2",equipment_type="fan"}}'
        values: '0+60x2 120x13'
      - series: 'vigil_sink_last_push_timestamp_seconds{{job="vigil_pushgateway_sink"}}'
        values: '0+60x15'
    alert_rule_test:
      - eval_time: 10m
        alertname: VigilMachineSilent
        exp_alerts:
          - exp_labels: {{severity: warning, category: equipment, job: vigil_window_stats, site: north,
                          equipment_id: m2, equipment_type: fan}}
            exp_annotations:
              summary: "m2 (fan) at north silent for 8m 0s"
      - eval_time: 10m
        alertname: VigilPipelineStalled
        exp_alerts: []
      - eval_time: 10m
        alertname: VigilSinkNotPushing
        exp_alerts: []
  # Every machine stopped at minute 2 and the sink died at minute 3.
  - interval: 1m
    input_series:
      - series: 'vigil_equipment_last_window_end_seconds{{job="vigil_window_stats",
          site="north",equipment_id="m1",equipment_type="pump"}}'
        values: '0+60x2 120x13'
      - series: 'vigil_sink_last_push_timestamp_seconds{{job="vigil_pushgateway_sink"}}'
        values: '0+60x3 180x12'
    alert_rule_test:
      - eval_time: 2m
        alertname: VigilPipelineStalled
        exp_alerts: []
      - eval_time: 5m
        alertname: VigilPipelineStalled
        exp_alerts:
          - exp_labels: {{severity: critical, category: pipeline}}
            exp_annotations:
              summary: "No new window statistics for 3m 0s"
      - eval_time: 5m
        alertname: VigilSinkNotPushing
        exp_alerts:
          - exp_labels: {{severity: critical, category: pipeline, job: vigil_pushgateway_sink}}
            exp_annotations:
              summary: "Pushgateway sink has not pushed for 2m 0s"
              description: "jobs.pushgateway_sink is dead or every push fails; check its log."
"""


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_alert_rules_fire_for_silent_machine_stalled_pipeline_and_dead_sink(settings: Settings, tmp_path: Path) -> None:
    paths = render_configs(settings, tmp_path / "cfg")
    tests = tmp_path / "cfg" / "rules_test.yml"
    tests.write_text(RULE_TESTS.format(rules=paths["rules"]))
    assert "SUCCESS" in run([PROMTOOL, "test", "rules", str(tests)])
