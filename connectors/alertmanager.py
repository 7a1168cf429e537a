"""A small client for the Alertmanager v2 API (alerts and silences), on httpx.

Used by the alert publisher (post / read back alerts) and meant for the CLI (silences). Errors are split by
what the caller can do about them: :class:`AlertmanagerUnavailable` (cannot connect, timeout, 5xx: retry
later) and :class:`AlertmanagerRejected` (4xx: the request itself is wrong; retrying the same request never
helps). Both say which URL and what to do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from connectors.monitoring import MonitoringAccess, monitoring_access
from vigil.settings import Settings

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
# name="value", name!="value", name=~"regex", name!~"regex" (quotes optional), as amtool and the UI write them.
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')


class AlertmanagerError(RuntimeError):
    """Any failed Alertmanager call."""


class AlertmanagerUnavailable(AlertmanagerError):
    """Alertmanager could not be reached or failed on its side (5xx): the same request may succeed later."""


class AlertmanagerRejected(AlertmanagerError):
    """Alertmanager refused the request (4xx): fix the request, retrying it unchanged will not help."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def parse_matcher(text: str) -> dict[str, Any]:
    """``site="north"`` / ``severity!=warning`` / ``alertname=~"Vigil.*"`` -> an API v2 matcher object."""
    match = _MATCHER.match(text)
    if not match:
        raise ValueError(
            f'invalid matcher {text!r}: write name=value, name!=value, name=~regex or name!~regex (e.g. site="north")'
        )
    name, op, quoted, bare = match.groups()
    value = re.sub(r'\\([\\"])', r"\1", quoted) if quoted is not None else bare
    return {"name": name, "value": value, "isRegex": "~" in op, "isEqual": not op.startswith("!")}


def _matchers(matchers: Iterable[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = [parse_matcher(m) if isinstance(m, str) else {"isRegex": False, "isEqual": True, **m} for m in matchers]
    if not out:
        raise ValueError('a silence needs at least one matcher (e.g. site="north"); it would mute everything')
    return out


def _filter_param(matcher: str | Mapping[str, Any]) -> str:
    """One ``filter`` query value of GET /alerts or /silences, in the API's matcher syntax."""
    m = parse_matcher(matcher) if isinstance(matcher, str) else {"isRegex": False, "isEqual": True, **matcher}
    op = {(True, False): "=", (False, False): "!=", (True, True): "=~", (False, True): "!~"}[
        (bool(m["isEqual"]), bool(m["isRegex"]))
    ]
    value = str(m["value"]).replace("\\", "\\\\").replace('"', '\\"')
    return f'{m["name"]}{op}"{value}"'


def rfc3339(moment: datetime | float) -> str:
    """UTC RFC 3339 with milliseconds, as Alertmanager writes it (a float is a Unix time in seconds)."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class AlertmanagerClient:
    """Alertmanager v2 API at ``base_url`` (e.g. ``settings.prometheus.alertmanager_url``)."""

    def __init__(
        self, base_url: str, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, access: MonitoringAccess | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        options = access.httpx_options() if access else {}
        self._http = httpx.Client(base_url=self.base_url + "/api/v2", timeout=timeout, **options)  # type: ignore[arg-type]

    @classmethod
    def for_settings(cls, settings: Settings, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT) -> AlertmanagerClient:
        """The configured Alertmanager, with its CA and credentials."""
        return cls(settings.prometheus.alertmanager_url, timeout, monitoring_access(settings))

    def __enter__(self) -> AlertmanagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.base_url}/api/v2{path}"
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AlertmanagerUnavailable(
                f"cannot reach Alertmanager at {self.base_url} ({method} {url}: {type(exc).__name__}: {exc}). "
                "Start it with `vigil stack up`, or point VIGIL_PROMETHEUS__HOST / VIGIL_PROMETHEUS__ALERTMANAGER_PORT "
                "at a running one."
            ) from exc
        if resp.status_code >= 500:
            raise AlertmanagerUnavailable(
                f"Alertmanager at {self.base_url} failed: {method} {url} -> HTTP {resp.status_code} "
                f"{resp.text.strip()[:300]}; see its log"
            )
        if resp.status_code == 401:
            raise AlertmanagerRejected(
                f"Alertmanager at {self.base_url} refused the credentials ({method} {url}: HTTP 401): the password "
                "file (VIGIL_PROMETHEUS__PASSWORD_FILE) must hold the password its web config was rendered with",
                401,
            )
        if resp.status_code >= 400:
            raise AlertmanagerRejected(
                f"Alertmanager at {self.base_url} rejected {method} {url}: HTTP {resp.status_code} "
                f"{resp.text.strip()[:500]}",
                resp.status_code,
            )
        return resp

    # -- alerts ------------------------------------------------------------------------------------------
    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Create, refresh or resolve alerts (one request; Alertmanager identifies them by their label set)."""
        self._request("POST", "/alerts", json=list(alerts))

    def get_alerts(
        self,
        filter: Iterable[str | Mapping[str, Any]] = (),
        *,
        active: bool = True,
        silenced: bool = True,
        inhibited: bool = True,
        unprocessed: bool = True,
        receiver: str | None = None,
    ) -> list[dict[str, Any]]:
        """Alerts matching every matcher in ``filter`` (resolved ones are never returned)."""
        params: list[tuple[str, str]] = [
            (name, str(flag).lower())
            for name, flag in (
                ("active", active),
                ("silenced", silenced),
                ("inhibited", inhibited),
                ("unprocessed", unprocessed),
            )
        ]
        params += [("filter", _filter_param(m)) for m in filter]
        if receiver:
            params.append(("receiver", receiver))
        return self._request("GET", "/alerts", params=params).json()

    # -- silences ----------------------------------------------------------------------------------------
    def create_silence(
        self,
        matchers: Iterable[str | Mapping[str, Any]],
        duration: timedelta | float,
        comment: str,
        created_by: str,
        starts_at: datetime | None = None,
    ) -> str:
        """Mute alerts matching all ``matchers`` for ``duration`` (a timedelta or seconds); returns the silence id."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        if seconds <= 0:
            raise ValueError(f"silence duration must be positive, got {seconds} s")
        if not comment.strip() or not created_by.strip():
            raise ValueError("a silence needs a comment (why) and created_by (who), so others know whom to ask")
        start = starts_at or datetime.now(tz=UTC)
        body = {
            "matchers": _matchers(matchers),
            "startsAt": rfc3339(start),
            "endsAt": rfc3339(start + timedelta(seconds=seconds)),
            "comment": comment,
            "createdBy": created_by,
        }
        return self._request("POST", "/silences", json=body).json()["silenceID"]

    def list_silences(
        self, filter: Iterable[str | Mapping[str, Any]] = (), *, include_expired: bool = False
    ) -> list[dict[str, Any]]:
        """Silences (active and pending; expired ones too with ``include_expired``), newest end first."""
        params = [("filter", _filter_param(m)) for m in filter]
        silences = self._request("GET", "/silences", params=params).json()
        if not include_expired:
            silences = [s for s in silences if s.get("status", {}).get("state") != "expired"]
        return sorted(silences, key=lambda s: s.get("endsAt", ""), reverse=True)

    def expire_silence(self, silence_id: str) -> None:
        """End a silence now (Alertmanager keeps it, as expired, for its retention)."""
        try:
            self._request("DELETE", f"/silence/{silence_id}")
        except AlertmanagerRejected as exc:
            if exc.status_code == 404:
                raise AlertmanagerRejected(
                    f"no silence {silence_id!r} in Alertmanager at {self.base_url}; list them with list_silences()",
                    404,
                ) from exc
            raise
