"""A small Prometheus Pushgateway client for text that is already rendered: PUT, DELETE and read back groups.

``connectors.self_metrics`` pushes a ``prometheus_client`` registry (``push_to_gateway``) and suits a
service's few own counters. This client is for a process that renders the text exposition itself (many
series, one group per grouping key) and needs what ``push_to_gateway`` does not offer: DELETE of a group
it no longer pushes, the gateway's current content (``/api/v1/metrics``) to start from, one HTTP session
with retries. It knows nothing about what the series mean.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from connectors.monitoring import MonitoringAccess, PinnedSession, monitoring_access
from vigil.settings import Settings

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4"
DEFAULT_TIMEOUT = (2.0, 10.0)  # connect, read (seconds)

_SAFE_PATH_VALUE = re.compile(r"^[A-Za-z0-9_.:-]+$")


class PushgatewayError(Exception):
    """A request the Pushgateway did not accept, or could not be sent (retries already done)."""


def grouping_path(job: str, **labels: str) -> str:
    """Pushgateway URL path for a grouping key; unsafe values (``/``, empty, ...) go base64."""
    parts = [f"/metrics/job/{job}"]
    for name, value in labels.items():
        if _SAFE_PATH_VALUE.match(value):
            parts.append(f"{name}/{value}")
        else:
            encoded = base64.urlsafe_b64encode(value.encode()).decode() or "="
            parts.append(f"{name}@base64/{encoded}")
    return "/".join(parts)


def _session(retries: int) -> PinnedSession:
    retry = Retry(
        total=retries,
        backoff_factor=0.3,  # 0.3, 0.6, 1.2 s
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "PUT", "DELETE"}),
        raise_on_status=False,
    )
    session = PinnedSession()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


class PushgatewayClient:
    """The Pushgateway at ``base_url`` (e.g. ``settings.prometheus.pushgateway_url``); one session, :meth:`close` it."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        access: MonitoringAccess | None = None,
        retries: int = 3,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._session = _session(retries)
        if access is not None:
            access.configure(self._session)

    @classmethod
    def for_settings(
        cls, settings: Settings, *, timeout: tuple[float, float] = DEFAULT_TIMEOUT, retries: int = 3
    ) -> PushgatewayClient:
        """The configured Pushgateway, with its CA and credentials."""
        return cls(
            settings.prometheus.pushgateway_url, timeout=timeout, access=monitoring_access(settings), retries=retries
        )

    def put(self, path: str, text: str) -> None:
        """Replace the group at ``path`` (:func:`grouping_path`) with ``text`` (text exposition format)."""
        self._request("PUT", path, text.encode())

    def delete(self, path: str) -> None:
        """Remove the group at ``path`` and every series in it."""
        self._request("DELETE", path, None)

    def groups(self) -> list[dict[str, Any]]:
        """Every group the gateway holds, as ``/api/v1/metrics`` returns them (``data``)."""
        try:
            resp = self._session.get(self.base_url + "/api/v1/metrics", timeout=self.timeout)
            resp.raise_for_status()
            return resp.json()["data"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise PushgatewayError(str(exc)) from exc

    def close(self) -> None:
        self._session.close()

    def _request(self, method: str, path: str, body: bytes | None) -> None:
        url = self.base_url + path
        try:
            resp = self._session.request(
                method, url, data=body, timeout=self.timeout, headers={"Content-Type": TEXT_CONTENT_TYPE}
            )
        except requests.RequestException as exc:
            raise PushgatewayError(f"{method} {url}: {exc}") from exc
        if resp.status_code >= 300:
            raise PushgatewayError(f"{method} {url}: HTTP {resp.status_code} {resp.text.strip()[:500]}")
