"""Hot-path servers: render Prometheus / Alertmanager configs and build their command lines.

The templates live in ``flink-conf/prometheus/`` with ``<<name>>`` placeholders (``$`` and ``{{ }}``
already mean something in PromQL and alert templates). Everything filled in comes from
:class:`vigil.settings.Settings`, so a test that picks free ports gets a consistent set of
configs and argv. :func:`start_hot_path` starts all three servers as child processes; the stack
manager and the integration tests both use it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import bcrypt
import requests
import yaml

from alerting.webhook_auth import ensure_token
from connectors.monitoring import MonitoringCredentialsMissing, monitoring_session
from operations.certs import ensure_local_certs
from vigil.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

TEMPLATE_DIR = PROJECT_ROOT / "flink-conf" / "prometheus"
_PLACEHOLDER = re.compile(r"<<(\w+)>>")

# Debian/Ubuntu package names first, then upstream release binary names.
_BINARIES = {
    "prometheus": ("prometheus",),
    "pushgateway": ("prometheus-pushgateway", "pushgateway"),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
}


# Defaults of thresholds that have no setting yet (template_values prefers the setting once it exists).
SITE_SILENT_AFTER_S = 45  # VigilSiteSilent: ~15 s normal delay (lateness, push, scrape) + margin, then page
CONSUMER_LAG_FLOOR = 10_000  # records; VigilConsumerLagGrowing ignores lag that stays below this
DEAD_LETTER_ALERT_RATE = 0.1  # records/s into the dead-letter topic before VigilDeadLettersRising may fire
PUBLISHER_HEARTBEAT_S = 10  # = jobs.alert_publisher.HEARTBEAT_S (not imported: it pulls in pandas/Kafka)


def config_dir(settings: Settings) -> Path:
    """Where the rendered configs live by default (generated; never edit by hand)."""
    return settings.data_dir / "prometheus" / "config"


def _binary(name: str) -> str:
    for candidate in _BINARIES[name]:
        found = shutil.which(candidate)
        if found:
            return found
    raise FileNotFoundError(
        f"{name} binary not found (tried {', '.join(_BINARIES[name])} on PATH). Install it with "
        "`apt-get install prometheus prometheus-pushgateway prometheus-alertmanager` "
        "or put the upstream release binaries on PATH."
    )


def _duration(seconds: float) -> str:
    """Prometheus duration string; sub-second intervals keep millisecond precision."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _webhook_snippets(url: str | None) -> dict[str, str]:
    """YAML lines for the optional generic webhook (settings.prometheus.alert_webhook_url): a receiver, and a
    first route that copies every alert to it (continue: true) without changing the relay routes."""
    if not url:
        return {"webhook_route": "", "webhook_receiver": ""}
    quoted = json.dumps(url)  # a JSON string is a valid YAML double-quoted scalar
    return {
        "webhook_route": "    # Every alert also goes to settings.prometheus.alert_webhook_url.\n"
        "    - receiver: webhook\n      continue: true",
        "webhook_receiver": "  - name: webhook\n    webhook_configs:\n"
        f"      - url: {quoted}\n        send_resolved: true",
    }


def _client_snippet(settings: Settings, indent: int) -> str:
    """YAML lines (under a scrape config or an Alertmanager entry) with which Prometheus reaches the three
    servers: their scheme, CA and the basic-auth user, the password read from its file by Prometheus."""
    p = settings.prometheus
    lines = [f"scheme: {p.scheme}"]
    if p.tls:
        lines += ["tls_config:", f"  ca_file: {json.dumps(str(settings.monitoring_ca_path.resolve()))}"]
    if p.basic_auth:
        lines += [
            "basic_auth:",
            f"  username: {json.dumps(p.username)}",
            f"  password_file: {json.dumps(str(settings.monitoring_password_path.resolve()))}",
        ]
    return "\n".join(" " * indent + line for line in lines)


def template_values(settings: Settings) -> dict[str, str]:
    """Every placeholder the templates may use."""
    p = settings.prometheus
    alerting = settings.alerting
    edge_metrics_port = getattr(settings.edge, "metrics_port", 15052)
    return {
        "scrape_interval": _duration(p.scrape_interval_s),
        "prometheus_address": f"{p.host}:{p.prometheus_port}",
        "pushgateway_address": f"{p.host}:{p.pushgateway_port}",
        "alertmanager_address": f"{p.host}:{p.alertmanager_port}",
        "edge_metrics_address": f"{settings.edge.host}:{edge_metrics_port}",
        "monitoring_client_scrape": _client_snippet(settings, 4),
        "monitoring_client_alerting": _client_snippet(settings, 6),
        "pipeline_stall_after_s": str(p.pipeline_stall_after_s),
        "machine_silent_after_s": str(p.machine_silent_after_s),
        "startup_grace_s": str(p.startup_grace_s),
        # Three missed pushes plus one scrape before the sink counts as stalled.
        "sink_stall_after_s": str(round(3 * p.push_interval_s + p.scrape_interval_s)),
        "site_silent_after_s": str(getattr(p, "site_silent_after_s", SITE_SILENT_AFTER_S)),
        "scoring_stall_after_s": str(getattr(p, "scoring_stall_after_s", p.pipeline_stall_after_s)),
        "clickhouse_stall_after_s": str(getattr(p, "clickhouse_stall_after_s", p.pipeline_stall_after_s)),
        "consumer_lag_floor": str(getattr(alerting, "consumer_lag_floor", CONSUMER_LAG_FLOOR)),
        "dead_letter_rate": str(getattr(alerting, "dead_letter_alert_rate", DEAD_LETTER_ALERT_RATE)),
        "dead_letter_topic": settings.kafka.dead_letter_topic,
        # Three missed heartbeats / polls plus one scrape.
        "publisher_stall_after_s": str(round(3 * PUBLISHER_HEARTBEAT_S + p.scrape_interval_s)),
        "lag_stall_after_s": str(round(3 * alerting.lag_poll_s + p.scrape_interval_s)),
        # Alertmanager: timings and the notification relay (alerting/).
        "group_wait": _duration(alerting.group_wait_s),
        "group_interval": _duration(alerting.group_interval_s),
        "repeat_interval": alerting.repeat_interval,
        "relay_url": f"http://{alerting.relay_host}:{alerting.relay_port}",
        # The relay's webhook token (created here when missing: Alertmanager starts before the relay).
        "relay_token_file": json.dumps(str(_relay_token_file(settings))),
        **_webhook_snippets(p.alert_webhook_url),
    }


def _relay_token_file(settings: Settings) -> Path:
    ensure_token(settings.relay_token_path)
    return settings.relay_token_path.resolve()


def _render(template: Path, values: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{template}: unknown placeholder <<{key}>>; known: {sorted(values)}")
        return values[key]

    text = _PLACEHOLDER.sub(substitute, template.read_text())
    yaml.safe_load(text)  # fail here, with the file name, rather than in the server's log
    return text


def render_configs(settings: Settings, out_dir: Path) -> dict[str, Path]:
    """Write prometheus.yml, rules/vigil.rules.yml and alertmanager.yml into ``out_dir``.

    Returns their paths keyed ``prometheus``, ``rules``, ``alertmanager``.
    """
    values = template_values(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rules").mkdir(exist_ok=True)
    paths = {
        "prometheus": out_dir / "prometheus.yml",
        "rules": out_dir / "rules" / "vigil.rules.yml",
        "alertmanager": out_dir / "alertmanager.yml",
    }
    paths["prometheus"].write_text(_render(TEMPLATE_DIR / "prometheus.yml", values))
    paths["rules"].write_text(_render(TEMPLATE_DIR / "rules" / "vigil.rules.yml", values))

    paths["alertmanager"].write_text(_render(TEMPLATE_DIR / "alertmanager.yml", values))
    web = render_web_config(settings)
    if web is not None:
        paths["web"] = out_dir / "web.yml"
        _write_private(paths["web"], web)
    return paths


def render_web_config(settings: Settings) -> str | None:
    """The ``--web.config.file`` the three servers share (exporter-toolkit's format): TLS 1.3 with the
    monitoring certificate, and the user with a bcrypt hash of the password file (created here when missing,
    as are the local stack's certificates). None when both TLS and basic auth are off."""
    p = settings.prometheus
    if not (p.tls or p.basic_auth):
        return None
    config: dict[str, object] = {}
    if p.tls:
        ensure_local_certs(settings)  # the monitoring servers' certificate (nothing when the plant's are set)
        for path in (settings.monitoring_cert_path, settings.monitoring_key_path):
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} does not exist: `vigil certs init` creates the local certificates; for your own, "
                    "set VIGIL_PROMETHEUS__TLS_CERT_FILE and ..._TLS_KEY_FILE"
                )
        config["tls_server_config"] = {
            "cert_file": str(settings.monitoring_cert_path.resolve()),
            "key_file": str(settings.monitoring_key_path.resolve()),
            "min_version": "TLS13",
        }
    if p.basic_auth:
        password = ensure_token(settings.monitoring_password_path, "monitoring password")
        # Cost 10: the servers cache a verified password, so the hash is paid once per connection, not per request.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
        config["basic_auth_users"] = {p.username: hashed}
    return "# Generated by Vigil (operations/stack/prometheus_configs.py); do not edit.\n" + yaml.safe_dump(
        config, sort_keys=False
    )


def _write_private(path: Path, text: str) -> None:
    """A file only this user reads (it holds a password hash)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def _web_flags(settings: Settings, config_dir: Path) -> list[str]:
    p = settings.prometheus
    return [f"--web.config.file={config_dir / 'web.yml'}"] if (p.tls or p.basic_auth) else []


def prometheus_argv(settings: Settings, config_dir: Path) -> list[str]:
    p = settings.prometheus
    return [
        _binary("prometheus"),
        f"--config.file={config_dir / 'prometheus.yml'}",
        f"--storage.tsdb.path={settings.data_dir / 'prometheus' / 'tsdb'}",
        f"--storage.tsdb.retention.time={p.retention}",
        f"--web.listen-address={p.host}:{p.prometheus_port}",
        # No --web.enable-lifecycle or --web.enable-admin-api: no one can stop it or delete series over HTTP.
        *_web_flags(settings, config_dir),
    ]


def pushgateway_argv(settings: Settings, config_dir: Path) -> list[str]:
    p = settings.prometheus
    return [
        _binary("pushgateway"),
        f"--web.listen-address={p.host}:{p.pushgateway_port}",
        *_web_flags(settings, config_dir),
        # Survive restarts: otherwise every machine's gauges vanish until its next window.
        f"--persistence.file={settings.data_dir / 'pushgateway' / 'metrics.data'}",
        "--persistence.interval=1m",
    ]


def alertmanager_argv(settings: Settings, config_dir: Path) -> list[str]:
    p = settings.prometheus
    return [
        _binary("alertmanager"),
        f"--config.file={config_dir / 'alertmanager.yml'}",
        f"--storage.path={settings.data_dir / 'alertmanager'}",
        f"--web.listen-address={p.host}:{p.alertmanager_port}",
        *_web_flags(settings, config_dir),
        # Empty = no HA gossip; the default would listen on 0.0.0.0:9094.
        "--cluster.listen-address=",
    ]


def health_urls(settings: Settings) -> dict[str, str]:
    """Readiness endpoints (200 when the server can serve queries / accept pushes and alerts)."""
    p = settings.prometheus
    return {
        "prometheus": f"{p.prometheus_url}/-/ready",
        "pushgateway": f"{p.pushgateway_url}/-/ready",
        "alertmanager": f"{p.alertmanager_url}/-/ready",
    }


def is_ready(settings: Settings, name: str, session: requests.Session | None = None) -> bool:
    """Whether server ``name`` (a key of :func:`health_urls`) answers its readiness endpoint, with credentials."""
    try:
        session = session or monitoring_session(settings)
        return session.get(health_urls(settings)[name], timeout=1.0).status_code == 200
    except (requests.RequestException, MonitoringCredentialsMissing):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(settings: Settings, procs: dict[str, subprocess.Popen], log_dir: Path, timeout_s: float = 30.0) -> None:
    """Poll each health URL until 200, failing fast (with the log tail) if a process exits."""
    pending = dict(health_urls(settings))
    deadline = time.monotonic() + timeout_s
    session = monitoring_session(settings)
    while pending:
        for name in list(pending):
            proc = procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode} during startup; "
                    f"{log_dir / (name + '.log')}:\n{_tail(log_dir / (name + '.log'))}"
                )
            if is_ready(settings, name, session):
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(
                f"not ready after {timeout_s}s: {pending}. Logs in {log_dir}; is the port taken by someone else?"
            )
        if pending:
            time.sleep(0.1)


def start_hot_path(settings: Settings, log_dir: Path, timeout_s: float = 30.0) -> list[subprocess.Popen]:
    """Render configs and start Pushgateway, Alertmanager and Prometheus; return when all are ready.

    Order matters only for quiet logs: Prometheus comes last so its first scrape and alert
    delivery find the others up. On any failure the already started processes are stopped.
    """
    cfg = config_dir(settings)
    render_configs(settings, cfg)
    for sub in ("prometheus/tsdb", "pushgateway", "alertmanager"):
        (settings.data_dir / sub).mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    commands = {
        "pushgateway": pushgateway_argv(settings, cfg),
        "alertmanager": alertmanager_argv(settings, cfg),
        "prometheus": prometheus_argv(settings, cfg),
    }
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, argv in commands.items():
            with (log_dir / f"{name}.log").open("ab") as out:
                procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.info("started %s (pid %d): %s", name, procs[name].pid, " ".join(argv))
        wait_ready(settings, procs, log_dir, timeout_s)
    except BaseException:
        stop_hot_path(list(procs.values()))
        raise
    return list(procs.values())


def stop_hot_path(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """SIGTERM (each server flushes: TSDB head, Pushgateway persistence file), then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
