"""How a client reaches Prometheus, Alertmanager and the Pushgateway: their CA and the basic-auth credentials.

The three servers take only TLS 1.3 and an authenticated user on every endpoint (their ``--web.config.file``,
rendered by the stack), so every client of theirs (the sinks, the alert publisher, the console, the tools)
builds its HTTP session here instead of calling a bare URL.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cached_property

import httpx
import requests

from vigil.settings import Settings


class PinnedSession(requests.Session):
    """A session whose ``verify`` (the servers' CA) wins over ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``:
    requests lets those variables replace a session's CA bundle (psf/requests#3829), and a machine that sets
    them to the system bundle would then refuse the local CA's certificates."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        return super().merge_environment_settings(url, proxies, stream, self.verify if verify is None else verify, cert)


class MonitoringCredentialsMissing(RuntimeError):
    """The monitoring password file or CA the settings name is not there."""


@dataclass(frozen=True)
class MonitoringAccess:
    """``auth``: (user, password), or None without basic auth; ``ca_file``: the CA to check the servers
    against, or None for plain HTTP (``prometheus.tls`` off)."""

    auth: tuple[str, str] | None
    ca_file: str | None

    @property
    def verify(self) -> str | bool:
        """For requests: the CA bundle, or the system's when TLS is off (then unused)."""
        return self.ca_file or True

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """For httpx (a CA path is deprecated there): the servers' CA, TLS 1.3 as they require."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context

    def session(self) -> requests.Session:
        return self.configure(PinnedSession())

    def configure(self, session: PinnedSession) -> PinnedSession:
        session.auth = self.auth
        session.verify = self.verify
        return session

    def httpx_options(self) -> dict[str, object]:
        """Keyword arguments for ``httpx.Client``."""
        return {"auth": self.auth, "verify": self.ssl_context if self.ca_file else True}

    def httpx_client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(**self.httpx_options(), **kwargs)  # type: ignore[arg-type]


def monitoring_access(settings: Settings) -> MonitoringAccess:
    """What the settings say: the password read from its file now (a rotated password takes effect at the next
    client built), the CA file checked to exist, so a missing one fails here with what to do."""
    p = settings.prometheus
    auth = None
    if p.basic_auth:
        path = settings.monitoring_password_path
        try:
            password = path.read_text().strip()
        except FileNotFoundError:
            raise MonitoringCredentialsMissing(
                f"no monitoring password at {path}: `vigil stack up` creates it with the servers; for servers of "
                "your own, write their password there or point VIGIL_PROMETHEUS__PASSWORD_FILE at it"
            ) from None
        auth = (p.username, password)
    ca_file = None
    if p.tls:
        ca = settings.monitoring_ca_path
        if not ca.exists():
            raise MonitoringCredentialsMissing(
                f"no CA certificate at {ca} to check Prometheus/Alertmanager/Pushgateway against: `vigil certs init` "
                "creates the local one; for your own PKI set VIGIL_PROMETHEUS__TLS_CA_FILE"
            )
        ca_file = str(ca)
    return MonitoringAccess(auth, ca_file)


def monitoring_session(settings: Settings) -> requests.Session:
    """A requests session that the three servers accept."""
    return monitoring_access(settings).session()
