"""One typed settings object: defaults, config file, environment, and hand-over to child processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from vigil.settings import KafkaSettings, Settings


def test_environment_overrides_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA__BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("VIGIL_WINDOW__SIZE_MS", "10000")
    monkeypatch.setenv("VIGIL_PROMETHEUS__EXPORTED_STATS", '["avg", "max"]')
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "broker:9093"
    assert settings.window.size_ms == 10000
    assert settings.prometheus.exported_stats == ["avg", "max"]


def test_config_file_is_read_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "vigil.toml"
    config.write_text('[clickhouse]\nhost = "ch.internal"\nport = 8443\n[edge]\nport = 7000\n')
    monkeypatch.setenv("VIGIL_CONFIG", str(config))
    monkeypatch.setenv("VIGIL_EDGE__PORT", "7001")
    settings = Settings()
    assert (settings.clickhouse.host, settings.clickhouse.port) == ("ch.internal", 8443)
    assert settings.edge.port == 7001


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_CONFIG", "/nonexistent/vigil.toml")
    with pytest.raises(FileNotFoundError, match="VIGIL_CONFIG"):
        Settings()


def test_invalid_values_are_rejected_with_the_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA__PARTITIONS", "0")
    with pytest.raises(ValidationError, match="partitions"):
        Settings()


def test_to_env_rebuilds_identical_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="h:1", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"),
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_sasl_and_tls_reach_both_kafka_clients() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="b:9096",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="vigil",
        sasl_password="secret",
        ssl_ca_location="/ca.pem",
    )
    librdkafka = kafka.client_config()
    assert librdkafka["sasl.mechanism"] == "SCRAM-SHA-512"
    assert librdkafka["sasl.password"] == "secret"
    assert librdkafka["ssl.ca.location"] == "/ca.pem"
    java = kafka.java_properties()
    assert java["security.protocol"] == "SASL_SSL"
    assert "ScramLoginModule" in java["sasl.jaas.config"] and 'password="secret"' in java["sasl.jaas.config"]
    assert java["ssl.truststore.location"] == "/ca.pem"


def test_each_component_connects_to_kafka_as_its_own_principal(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    kafka = settings.kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert kafka.ssl_ca_location == str(settings.certs_dir / "ca.pem")
    with pytest.raises(ValueError, match="without an identity"):
        kafka.client_config()
    with pytest.raises(ValueError, match="no Kafka password for 'vigil-edge'"):
        kafka.as_identity("edge").client_config()
    kafka.password_file("edge").parent.mkdir(parents=True)
    kafka.password_file("edge").write_text("s3cret\n")
    conf = kafka.as_identity("edge").client_config()
    assert (conf["sasl.username"], conf["sasl.password"]) == ("vigil-edge", "s3cret")
    with pytest.raises(ValueError, match="unknown Kafka identity"):
        kafka.as_identity("intruder")
    # A cluster elsewhere keeps the system's trust store unless it names its CA.
    remote = Settings(data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="broker1:9093,broker2:9093"))
    conf = remote.kafka.model_copy(update={"sasl_username": "vigil"}).client_config()
    assert remote.kafka.ssl_ca_location is None and "ssl.ca.location" not in conf


def test_default_ports_of_the_local_stack_are_distinct() -> None:
    settings = Settings()
    ports = {"kafka": int(settings.kafka.bootstrap_servers.rsplit(":", 1)[1])}
    for section_name, section in settings:
        if isinstance(section, BaseModel):
            for name, value in section:
                if name.endswith("port") and isinstance(value, int) and name != "smtp_port":
                    ports[f"{section_name}.{name}"] = value
    assert len(ports) > 10
    clashes = {p: [n for n, q in ports.items() if q == p] for p in ports.values() if list(ports.values()).count(p) > 1}
    assert not clashes, f"two services of the local stack share a port: {clashes}"
