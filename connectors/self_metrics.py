"""A service's own counters to the Pushgateway (the alert publisher, the lag exporter, the ClickHouse sink).

One push replaces the job's group (PUT), so a service that stops reporting a series stops showing it. A failed
push is logged and reported, never raised: the service's real work must not stop because its metrics could not
be delivered (the Prometheus rules notice the missing pushes instead).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, push_to_gateway

from vigil.settings import Settings

log = logging.getLogger(__name__)

PUSH_TIMEOUT_S = 2.0


def push_self_metrics(settings: Settings, job: str, registry: CollectorRegistry, what: str = "metrics") -> bool:
    """Push ``registry`` as ``job``; False (with a warning naming ``what`` and the gateway) when it failed."""
    url = settings.prometheus.pushgateway_url
    try:
        push_to_gateway(url, job=job, registry=registry, timeout=PUSH_TIMEOUT_S)
    except OSError as exc:
        log.warning("could not push %s to the Pushgateway %s: %s", what, url, exc)
        return False
    return True
