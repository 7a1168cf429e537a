"""`vigil certs`: the local stack's certificate authority and what it signs (edge, gateways, monitoring servers).

A plant brings its own PKI and points the ``edge.tls_*`` / ``edge.gateway_*`` settings at it; the local stack
makes its own so that mTLS is on from the first `make demo`. ECDSA P-256 keys, SHA-256 signatures; private keys
are 0600 files in the 0700 certs folder. The CA key signs gateway certificates and never leaves that folder.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.tls import tls_files
from vigil.settings import Settings

CA_DAYS, LEAF_DAYS = 3 * 365, 365
LOCAL_GATEWAY = "local-gateway"  # the identity of the local stack's simulator and gateway clients
CA_NAME = "Vigil local CA"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    common_name: str
    not_after: datetime


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vigil"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _ca_key_path(settings: Settings) -> Path:
    return settings.certs_dir / "ca-key.pem"


def _ca_cert_path(settings: Settings) -> Path:
    """The local CA's certificate (a CA a setting names is the plant's and is never written)."""
    return settings.certs_dir / "ca.pem"


def create_ca(settings: Settings) -> Issued:
    """A new self-signed CA in the certs folder (replacing any: every certificate it signed stops working)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    _write_private(_ca_key_path(settings), _key_pem(key))
    ca = _ca_cert_path(settings)
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(ca, _ca_key_path(settings), CA_NAME, cert.not_valid_after_utc)


def issue(
    settings: Settings,
    common_name: str,
    cert_path: Path,
    key_path: Path,
    server_names: tuple[str, ...] = (),
    client_too: bool = False,
) -> Issued:
    """A leaf certificate signed by the local CA: a server's when ``server_names`` (its DNS names and IPs, put in
    the subject alternative names gRPC checks), else a client's (a gateway: ``common_name`` is its identity);
    ``client_too``: a server that also authenticates as a client with it (the Kafka broker to its controller)."""
    try:
        ca_key = serialization.load_pem_private_key(_ca_key_path(settings).read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(_ca_cert_path(settings).read_bytes())
    except FileNotFoundError:
        raise RuntimeError(f"no local CA in {settings.certs_dir}: run `vigil certs init` first") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise RuntimeError(
            f"{_ca_key_path(settings)} is not an EC key; re-create the CA with `vigil certs init --new-ca`"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] * bool(server_names)
                + [ExtendedKeyUsageOID.CLIENT_AUTH] * (client_too or not server_names)
            ),
            critical=False,
        )
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in dict.fromkeys(server_names):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, common_name, cert.not_valid_after_utc)


def edge_server_names(settings: Settings) -> tuple[str, ...]:
    """Names a gateway may dial the local edge by: the configured host, this machine's name, loopback."""
    return _local_names(settings.edge.host)


def kafka_server_names(settings: Settings) -> tuple[str, ...]:
    """Names the local Kafka broker is reached by (its listeners are on the bootstrap host)."""
    return _local_names(settings.kafka.bootstrap_servers.rsplit(":", 1)[0])


def local_kafka_tls(settings: Settings) -> bool:
    """Whether the Kafka broker's certificate is the local CA's to issue (TLS on, the CA not a plant's)."""
    return settings.kafka.uses_tls and settings.kafka.ssl_ca_location == str(_ca_cert_path(settings))


def monitoring_server_names(settings: Settings) -> tuple[str, ...]:
    """Names Prometheus, Alertmanager and the Pushgateway are reached by (one certificate for the three)."""
    return _local_names(settings.prometheus.host)


def _local_names(host: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys([host, "localhost", "127.0.0.1", "::1", socket.gethostname()]))


def ensure_local_certs(settings: Settings, renew: bool = False, new_ca: bool = False) -> list[Issued]:
    """The local CA and what it signs for the local stack: the edge's certificate, the local gateway's, the
    monitoring servers' (Prometheus, Alertmanager, Pushgateway), creating what is missing (``renew``: re-issue
    them; ``new_ca``: a new CA as well). Returns what was created. Where a setting names a CA of its own, that
    side is the plant's PKI: it issues every certificate that CA checks, not us."""
    e, p = settings.edge, settings.prometheus
    local_edge = e.tls_ca_file is None
    local_monitoring = p.tls and p.tls_ca_file is None
    local_kafka = local_kafka_tls(settings)
    if not (local_edge or local_monitoring or local_kafka):
        return []
    d = settings.certs_dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    f = tls_files(settings)
    made: list[Issued] = []
    if new_ca or not _ca_cert_path(settings).exists() or not _ca_key_path(settings).exists():
        made.append(create_ca(settings))
        renew = True
    if local_edge and e.tls_cert_file is None and e.tls_key_file is None and (renew or not f.edge_cert.exists()):
        made.append(issue(settings, "vigil-edge", f.edge_cert, f.edge_key, edge_server_names(settings)))
    if (
        local_edge
        and e.gateway_cert_file is None
        and e.gateway_key_file is None
        and (renew or not f.gateway_cert.exists())
    ):
        made.append(issue(settings, LOCAL_GATEWAY, f.gateway_cert, f.gateway_key))
    if (
        local_monitoring
        and p.tls_cert_file is None
        and p.tls_key_file is None
        and (renew or not settings.monitoring_cert_path.exists())
    ):
        made.append(
            issue(
                settings,
                "vigil-monitoring",
                settings.monitoring_cert_path,
                settings.monitoring_key_path,
                monitoring_server_names(settings),
            )
        )
    if local_kafka and (renew or not settings.kafka_keystore_path.exists()):
        made.append(issue_kafka_keystore(settings))
    return made


def issue_kafka_keystore(settings: Settings) -> Issued:
    """The local broker's certificate and key in one PEM file, the keystore form Kafka reads (ssl.keystore.type
    PEM): it serves its listeners with it and, as a client, authenticates to its own controller listener."""
    path = settings.kafka_keystore_path
    tmp_cert, tmp_key = path.with_suffix(".cert.tmp"), path.with_suffix(".key.tmp")
    issued = issue(settings, "vigil-kafka", tmp_cert, tmp_key, kafka_server_names(settings), client_too=True)
    _write_private(path, tmp_key.read_bytes() + tmp_cert.read_bytes())
    tmp_cert.unlink()
    tmp_key.unlink()
    return Issued(path, path, issued.common_name, issued.not_after)


def describe(path: Path) -> str:
    """Subject, issuer and validity of a PEM certificate, for `vigil certs show`."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    left = (cert.not_valid_after_utc - datetime.now(UTC)).days
    return (
        f"{path}: {cn[0].value if cn else '?'} (issued by {issuer[0].value if issuer else '?'}), valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d} ({left} days left)"
    )
