"""The local stack: which servers and pipeline processes run, on which ports, and how to check them.

Infrastructure (``vigil stack up``): an Apache Kafka broker (KRaft, durable log), ClickHouse's HTTP interface
over chDB, Prometheus Pushgateway, Prometheus and Alertmanager.
Pipeline (started by ``vigil demo`` / ``vigil stack up --pipeline``): the gRPC edge service, the window
statistics and anomaly-scoring Flink jobs (PyFlink local mode, one MiniCluster each) and the two
sinks feeding the hot and the cold path; then the hot path to people: the alert publisher (verdicts ->
Alertmanager), the notification relay (Alertmanager webhooks -> Slack / SMS / e-mail), the Kafka lag
exporter (for the Prometheus rules) and the local stand-in for Slack, the SMS provider and SMTP.
Every spec is built from one :class:`Settings`, so a test stack on free ports is the same code.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import requests
from pydantic import SecretStr

from connectors.clickhouse import apply_schema, make_client
from connectors.kafka import ensure_topics
from jobs.registry import FLINK_JOBS
from operations.certs import ensure_local_certs
from operations.stack import fault_proxy, kafka_broker, kafka_security, prometheus_configs, saas_standin
from operations.stack.process import ProcessManager, ServiceSpec, ServiceStatus
from streamlit_app.access import render_auth_secrets
from vigil.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

INFRA = ("kafka", "clickhouse", "pushgateway", "prometheus", "alertmanager")
# Between the edge and the broker when the edge has a route of its own (fault_proxy.routed): `vigil chaos`.
FAULT_PROXY = ("fault-proxy",)
PIPELINE = ("edge", "window-stats-job", "anomaly-scoring-job", "clickhouse-sink", "pushgateway-sink")
# settings.flink.topology = "combined": one job computes the windows and scores them (jobs/fleet_pipeline.py).
COMBINED_PIPELINE = ("edge", "fleet-pipeline-job", "clickhouse-sink", "pushgateway-sink")
# Anomalies topic -> people, and what the Prometheus rules need to watch the pipeline (start order).
ALERTING = ("saas-standin", "notify-relay", "alert-publisher", "kafka-lag")
# Anomaly episodes -> diagnosis, root cause, maintenance insights (insights topic -> clickhouse-sink).
AGENTS = ("agents-job",)
ALL_PIPELINE = tuple(dict.fromkeys(PIPELINE + COMBINED_PIPELINE + ALERTING + AGENTS))
CONSOLE = ("console",)
STANDIN_SLACK_TOKEN = "xoxb-local-standin"
STANDIN_SMS = {"sms_account_sid": "AC0000vigil0local", "sms_auth_token": "local-standin", "sms_from": "+15550100000"}


def pipeline_names(settings: Settings) -> tuple[str, ...]:
    """The pipeline services of the configured topology, in start order, with the alerting path."""
    return (COMBINED_PIPELINE if settings.flink.topology == "combined" else PIPELINE) + ALERTING + AGENTS


def with_standin(settings: Settings) -> Settings:
    """``settings`` with every people-facing channel that has no real endpoint pointed at the local stand-in.

    Only with ``alerting.use_standin``; a configured Slack webhook, SMS account or SMTP host is never replaced.
    """
    a = settings.alerting
    if not a.use_standin:
        return settings
    base = f"http://127.0.0.1:{a.standin_port}"
    update: dict[str, object] = {}
    if not (a.slack_webhook_url or a.slack_webhook_url_file or a.slack_bot_token or a.slack_bot_token_file):
        # The Web API (threads), as a workspace with a bot would be set up.
        update |= {"slack_bot_token": SecretStr(STANDIN_SLACK_TOKEN), "slack_api_url": base + "/api"}
    if not a.sms_account_sid:
        update |= {"sms_api_base_url": base, **STANDIN_SMS, "sms_auth_token": SecretStr(STANDIN_SMS["sms_auth_token"])}
    if not a.smtp_host:
        update |= {"smtp_host": "127.0.0.1", "smtp_port": a.standin_smtp_port, "smtp_starttls": False}
    return settings.model_copy(update={"alerting": a.model_copy(update=update)})


def flink_job_running(rest_port: int) -> bool:
    """True once a job on this Flink REST endpoint has all its tasks RUNNING (consuming, not just submitted)."""
    try:
        jobs = requests.get(f"http://127.0.0.1:{rest_port}/jobs/overview", timeout=1.0).json()["jobs"]
    except (requests.RequestException, ValueError, KeyError):
        return False
    return any(job["state"] == "RUNNING" and job["tasks"]["running"] == job["tasks"]["total"] for job in jobs)


def _python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def infra_specs(settings: Settings) -> dict[str, ServiceSpec]:
    config_dir = prometheus_configs.config_dir(settings)
    ch = settings.clickhouse

    def render() -> None:
        prometheus_configs.render_configs(settings, config_dir)

    return {
        "fault-proxy": fault_proxy.spec(settings),
        "kafka": kafka_broker.broker_spec(settings),
        "clickhouse": ServiceSpec(
            "clickhouse",
            [
                *_python_module("operations.stack.clickhouse.server"),
                "--host",
                ch.host,
                "--port",
                str(ch.port),
                "--data-path",
                str(settings.data_dir / "clickhouse"),
            ],
            ch.port,
            health_url=f"http://{ch.host}:{ch.port}/ping",
            cwd=PROJECT_ROOT,
            env=settings.to_env(),  # table names, users and the secrets directory (no password is in it)
            description="ClickHouse HTTP interface (chDB engine)",
        ),
        "pushgateway": ServiceSpec(
            "pushgateway",
            prometheus_configs.pushgateway_argv(settings, config_dir),
            settings.prometheus.pushgateway_port,
            ready=functools.partial(prometheus_configs.is_ready, settings, "pushgateway"),
            prepare=render,
            description="Prometheus Pushgateway",
        ),
        "prometheus": ServiceSpec(
            "prometheus",
            prometheus_configs.prometheus_argv(settings, config_dir),
            settings.prometheus.prometheus_port,
            ready=functools.partial(prometheus_configs.is_ready, settings, "prometheus"),
            prepare=render,
            description="Prometheus server",
        ),
        "alertmanager": ServiceSpec(
            "alertmanager",
            prometheus_configs.alertmanager_argv(settings, config_dir),
            settings.prometheus.alertmanager_port,
            ready=functools.partial(prometheus_configs.is_ready, settings, "alertmanager"),
            prepare=render,
            description="Alertmanager",
        ),
    }


def _local_flink_job(
    name: str, module: str, rest_port: int, log_dir: Path, description: str, env: dict[str, str]
) -> ServiceSpec:
    """A PyFlink job in its own in-process MiniCluster: ready once its tasks run; its Flink log in ``log_dir``
    (JVM and Python UDF workers), not pyflink's shared default folder."""
    return ServiceSpec(
        name,
        _python_module(module),
        rest_port,
        health_url=f"http://127.0.0.1:{rest_port}/overview",
        ready=lambda: flink_job_running(rest_port),
        env=env | {"FLINK_LOG_DIR": str(log_dir)},
        cwd=PROJECT_ROOT,
        start_timeout_s=120.0,
        description=description,
    )


def pipeline_specs(settings: Settings) -> dict[str, ServiceSpec]:
    env = settings.to_env()
    edge = settings.edge
    return {
        "edge": ServiceSpec(
            "edge",
            _python_module("edge.service"),
            edge.port,
            health_url=f"http://{edge.host}:{edge.metrics_port}/metrics",
            env=env,
            cwd=PROJECT_ROOT,
            description="gRPC ingestion service",
        ),
        **{
            job.service: _local_flink_job(
                job.service,
                job.module,
                job.rest_port(settings),
                settings.logs_dir / job.log_folder,
                job.description,
                env,
            )
            for job in FLINK_JOBS.values()
        },
        "clickhouse-sink": ServiceSpec(
            "clickhouse-sink",
            _python_module("jobs.clickhouse_sink"),
            0,
            env=env,
            cwd=PROJECT_ROOT,
            description="window-stats + anomalies + insights -> ClickHouse",
        ),
        "pushgateway-sink": ServiceSpec(
            "pushgateway-sink",
            _python_module("jobs.pushgateway_sink"),
            0,
            env=env,
            cwd=PROJECT_ROOT,
            description="window-stats + anomalies -> Pushgateway",
        ),
        **alerting_specs(settings),
        "console": console_spec(settings, env),
    }


def console_spec(settings: Settings, env: dict[str, str]) -> ServiceSpec:
    """The Streamlit console; with an OIDC provider configured, its [auth] secrets are rendered first."""

    secrets_path = settings.data_dir / "console" / "secrets.toml"
    argv = [
        *_python_module("streamlit"),
        "run",
        str(PROJECT_ROOT / "streamlit_app" / "app.py"),
        "--server.headless",
        "true",
        "--server.address",
        settings.console.host,
        "--server.port",
        str(settings.console.port),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        # No source watcher: after every script run it walked every imported module's path on the event
        # loop (~0.45 s of a sign-in -> Equipment journey, py-spy), holding back the page's messages.
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
    ]
    if settings.console.oidc_client_id:
        argv += ["--secrets.files", str(secrets_path)]
    return ServiceSpec(
        "console",
        argv,
        settings.console.port,
        health_url=f"http://{settings.console.host}:{settings.console.port}/_stcore/health",
        env=env | {"PYTHONPATH": str(PROJECT_ROOT)},
        cwd=PROJECT_ROOT,
        description="Streamlit console",
        prepare=lambda: render_auth_secrets(settings),
    )


def alerting_specs(settings: Settings) -> dict[str, ServiceSpec]:
    """The hot path to people: publisher -> Alertmanager -> relay -> (stand-in) Slack / SMS / e-mail."""
    a = settings.alerting
    env = settings.to_env()
    return {
        "saas-standin": ServiceSpec(
            "saas-standin",
            saas_standin.argv(settings, settings.logs_dir / "saas_standin.jsonl"),
            a.standin_port,
            health_url=f"http://127.0.0.1:{a.standin_port}/healthz",
            env=env,
            cwd=PROJECT_ROOT,
            description="stand-in for Slack, SMS provider and SMTP (records requests)",
        ),
        "notify-relay": ServiceSpec(
            "notify-relay",
            _python_module("alerting.relay"),
            a.relay_port,
            health_url=f"http://{a.relay_host}:{a.relay_port}/healthz",
            env=with_standin(settings).to_env(),
            cwd=PROJECT_ROOT,
            description="notification relay: Alertmanager webhooks -> Slack / SMS / e-mail",
        ),
        "alert-publisher": ServiceSpec(
            "alert-publisher",
            _python_module("jobs.alert_publisher"),
            0,
            env=env,
            cwd=PROJECT_ROOT,
            description="anomaly verdicts -> Alertmanager alerts",
        ),
        "kafka-lag": ServiceSpec(
            "kafka-lag",
            _python_module("jobs.kafka_lag"),
            0,
            env=env,
            cwd=PROJECT_ROOT,
            description="Kafka consumer lag + topic growth -> Pushgateway",
        ),
    }


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter: the stack keeps telemetry, passwords, tokens, models and
    sign-in keys under it, so one permission check guards them all (a folder someone else owns is left alone)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.getuid():
        os.chmod(path, 0o700)
    return path


class Stack:
    """Facade over the local stack: ``up``, ``down`` and ``status`` for infrastructure and pipeline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        private_dir(settings.data_dir)  # before anything is created under it
        self.processes = ProcessManager(settings.run_dir, settings.logs_dir)

    def specs(self) -> dict[str, ServiceSpec]:
        return infra_specs(self.settings) | pipeline_specs(self.settings)

    def up(self, names: tuple[str, ...] = INFRA, on_started=None) -> list[ServiceStatus]:
        specs = self.specs()
        statuses = []
        # The edge and its gateways (mTLS) and the monitoring servers speak TLS from the first start.
        ensure_local_certs(self.settings)
        for name in names:
            status = self.processes.start(specs[name])
            statuses.append(status)
            if on_started:
                on_started(status)
            if name == "kafka":
                kafka_security.apply(self.settings)
                ensure_topics(self.settings.kafka.as_identity("admin"))
            if name == "clickhouse":
                apply_schema(make_client(self.settings.clickhouse, "admin"), self.settings.clickhouse)
        return statuses

    def down(self, names: tuple[str, ...] = CONSOLE + ALL_PIPELINE + INFRA + FAULT_PROXY) -> list[str]:
        """Stop in reverse dependency order; returns the names that were running."""
        order = [name for name in (*CONSOLE, *ALL_PIPELINE, *INFRA, *FAULT_PROXY) if name in names]
        return [name for name in order if self.processes.stop(name)]

    def status(self) -> list[ServiceStatus]:
        return [self.processes.status(spec) for spec in self.specs().values()]
