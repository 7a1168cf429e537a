"""How clients reach Prometheus, Alertmanager and the Pushgateway: the CA and password from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.monitoring import MonitoringCredentialsMissing, monitoring_access
from vigil.settings import Settings


def test_the_servers_ca_wins_over_the_environments_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "pw"
    password.write_text("s3cret-s3cret-s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    settings = Settings(data_dir=tmp_path, prometheus={"password_file": password, "tls_ca_file": ca})
    session = monitoring_access(settings).session()
    assert session.auth == ("vigil", "s3cret-s3cret-s3cret")
    merged = session.merge_environment_settings("https://127.0.0.1:19090/-/ready", {}, None, None, None)
    assert merged["verify"] == str(ca)
    # An explicit per-request choice still wins.
    assert session.merge_environment_settings("https://x", {}, None, False, None)["verify"] is False


def test_missing_credentials_say_what_to_do(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(MonitoringCredentialsMissing, match="vigil stack up"):
        monitoring_access(settings)
    settings.monitoring_password_path.parent.mkdir(parents=True)
    settings.monitoring_password_path.write_text("s3cret-s3cret-s3cret")
    with pytest.raises(MonitoringCredentialsMissing, match="vigil certs init"):
        monitoring_access(Settings(data_dir=tmp_path, tls_dir=tmp_path / "no-certs"))
    plain = monitoring_access(Settings(data_dir=tmp_path, prometheus={"tls": False, "basic_auth": False}))
    assert plain.auth is None and plain.ca_file is None
