"""A service's own counters to the Pushgateway (the alert publisher, the lag exporter, the ClickHouse sink).

One push replaces the job's group (PUT), so a service that stops reporting a series stops showing it. A failed
push is logged and reported, never raised: the service's real work must not stop because its metrics could not
be delivered (the Prometheus rules notice the missing pushes instead).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest

from connectors.monitoring import MonitoringCredentialsMissing
from connectors.pushgateway import PushgatewayClient, PushgatewayError, grouping_path
from vigil.settings import Settings

log = logging.getLogger(__name__)

PUSH_TIMEOUT_S = 2.0


def push_self_metrics(settings: Settings, job: str, registry: CollectorRegistry, what: str = "metrics") -> bool:
    """Push ``registry`` as ``job``; False (with a warning naming ``what`` and the gateway) when it failed."""
    url = settings.prometheus.pushgateway_url
    try:
        client = PushgatewayClient.for_settings(settings, timeout=(PUSH_TIMEOUT_S, PUSH_TIMEOUT_S), retries=0)
        try:
            client.put(grouping_path(job), generate_latest(registry).decode())
        finally:
            client.close()
    except (PushgatewayError, MonitoringCredentialsMissing) as exc:
        log.warning("could not push %s to the Pushgateway %s: %s", what, url, exc)
        return False
    return True
