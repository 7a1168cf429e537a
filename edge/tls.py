"""Mutual TLS between gateways and the edge: which files, the gRPC credentials, and who the peer is.

Both sides verify the other against the same CA: the edge takes only gateways whose certificate the CA signed
(``require_client_auth``), a gateway talks only to an edge whose certificate names the host it dialled. The
gateway's certificate common name is its identity; the service uses it instead of the batch's own claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from vigil.settings import Settings


class TlsMaterialMissing(RuntimeError):
    """A certificate or key the settings point at is not there."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    edge_cert: Path
    edge_key: Path
    gateway_cert: Path
    gateway_key: Path


def tls_files(settings: Settings) -> TlsFiles:
    """The files in use: each ``edge.tls_*`` / ``edge.gateway_*`` setting, else the local stack's."""
    e, d = settings.edge, settings.certs_dir
    return TlsFiles(
        ca=e.tls_ca_file or d / "ca.pem",
        edge_cert=e.tls_cert_file or d / "edge.pem",
        edge_key=e.tls_key_file or d / "edge-key.pem",
        gateway_cert=e.gateway_cert_file or d / "gateway.pem",
        gateway_key=e.gateway_key_file or d / "gateway-key.pem",
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsMaterialMissing(
            f"{what} {path} does not exist: `vigil certs init` creates the local stack's CA and certificates "
            "(`vigil stack up` does it on first start); elsewhere point VIGIL_EDGE__TLS_*_FILE / "
            "VIGIL_EDGE__GATEWAY_*_FILE at your own, or set VIGIL_EDGE__TLS=false only behind a mesh that does mTLS"
        ) from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    f = tls_files(settings)
    return grpc.ssl_server_credentials(
        [(_read(f.edge_key, "the edge's TLS key"), _read(f.edge_cert, "the edge's TLS certificate"))],
        root_certificates=_read(f.ca, "the CA certificate gateways are checked against"),
        require_client_auth=True,
    )


def channel_credentials(
    settings: Settings, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """A gateway's credentials: its certificate and key (default: the settings'), the CA it trusts."""
    f = tls_files(settings)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(f.ca, "the CA certificate the edge is checked against"),
        private_key=_read(key or f.gateway_key, "the gateway's TLS key"),
        certificate_chain=_read(cert or f.gateway_cert, "the gateway's TLS certificate"),
    )


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The authenticated gateway of a call: its certificate's common name (None without TLS)."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None
