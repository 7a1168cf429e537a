"""The local CA: what `vigil certs init` creates, with which names, and private keys only the owner reads."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.tls import tls_files
from operations.certs import LOCAL_GATEWAY, describe, ensure_local_certs, issue
from vigil.settings import EdgeSettings, Settings


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_creates_a_ca_an_edge_and_a_gateway_certificate_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tls_dir=tmp_path / "certs", edge=EdgeSettings(host="10.1.2.3"))
    made = ensure_local_certs(settings)
    assert [m.common_name for m in made] == [
        "Vigil local CA",
        "vigil-edge",
        LOCAL_GATEWAY,
        "vigil-monitoring",
        "vigil-kafka",
    ]
    f = tls_files(settings)
    ca, edge, gateway = load(f.ca), load(f.edge_cert), load(f.gateway_cert)
    assert edge.issuer == gateway.issuer == ca.subject
    names = edge.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"10.1.2.3", "127.0.0.1"}
    usage = gateway.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert gateway.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == LOCAL_GATEWAY
    for key in (f.edge_key, f.gateway_key, tmp_path / "certs" / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700
    assert ensure_local_certs(settings) == []  # nothing missing: nothing re-issued
    renewed = ensure_local_certs(settings, renew=True)
    assert [m.common_name for m in renewed] == ["vigil-edge", LOCAL_GATEWAY, "vigil-monitoring", "vigil-kafka"]
    monitoring = load(settings.monitoring_cert_path)
    assert monitoring.issuer == ca.subject
    usage = monitoring.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    names = monitoring.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert load(f.edge_cert).serial_number != edge.serial_number and load(f.ca) == ca  # same CA, new leaf
    # The Kafka broker's keystore: key and certificate in one 0600 file; it is a client of its controller too.
    keystore = settings.kafka_keystore_path
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600 and b"PRIVATE KEY" in keystore.read_bytes()
    usage = load(keystore).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert "vigil-edge (issued by Vigil local CA)" in describe(f.edge_cert)


def test_files_a_setting_points_at_are_the_plants_and_left_alone(tmp_path: Path) -> None:
    own = tmp_path / "plant-ca.pem"
    own.write_text("the plant's CA")
    settings = Settings(
        data_dir=tmp_path,
        tls_dir=tmp_path / "certs",
        edge=EdgeSettings(tls_ca_file=own),
        prometheus={"tls_ca_file": own},
        kafka={"ssl_ca_location": str(own)},
    )
    assert ensure_local_certs(settings) == []
    assert own.read_text() == "the plant's CA"
    # The edge on the plant's PKI, the monitoring servers on the local CA: their certificate only, never the edge's.
    settings = Settings(data_dir=tmp_path, tls_dir=tmp_path / "certs", edge=EdgeSettings(tls_ca_file=own))
    made = ensure_local_certs(settings)
    assert [m.common_name for m in made] == ["Vigil local CA", "vigil-monitoring", "vigil-kafka"]
    assert own.read_text() == "the plant's CA"


def test_a_gateway_certificate_names_the_gateway(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tls_dir=tmp_path / "certs")
    ensure_local_certs(settings)
    issued = issue(settings, "site-7-gw", tmp_path / "gw.pem", tmp_path / "gw-key.pem")
    assert load(issued.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site-7-gw"
