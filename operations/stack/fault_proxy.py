"""The fault proxy: Toxiproxy (Shopify) between the edge service and the local broker, for `vigil chaos`.

The broker gives the edge a listener of its own (``kafka.local_edge_port``) and advertises it at
``edge.kafka_bootstrap_servers``, where the proxy listens: every connection of the edge to Kafka, the
bootstrap and the ones its metadata names, passes through the proxy, and nobody else's does. A blackhole is a
``timeout`` toxic of 0 on both directions: connections stay open and every byte is swallowed, as when a
network path drops packets silently (no reset, no refusal: the clients learn of it only from their timeouts).

The binary is built by scripts/setup.sh from the Go module proxy (go verifies it against the checksum database).
"""

from __future__ import annotations

import json
import shutil

import requests

from operations.stack.process import ServiceSpec
from vigil.settings import PROJECT_ROOT, Settings

BINARY = PROJECT_ROOT / ".venv" / "bin" / "toxiproxy-server"
EDGE_KAFKA = "edge-kafka"
_STREAMS = ("upstream", "downstream")


def routed(settings: Settings) -> bool:
    """Whether the edge reaches the local broker through the proxy."""
    return bool(settings.kafka.local_edge_port and settings.edge.kafka_bootstrap_servers)


def proxies(settings: Settings) -> list[dict[str, object]]:
    if not routed(settings):
        return []
    upstream = f"127.0.0.1:{settings.kafka.local_edge_port}"
    listen = settings.edge.kafka_bootstrap_servers
    return [{"name": EDGE_KAFKA, "listen": listen, "upstream": upstream, "enabled": True}]


def api(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.chaos.proxy_api_port}"


def spec(settings: Settings) -> ServiceSpec:
    config = settings.data_dir / "fault-proxy" / "proxies.json"

    def render() -> None:
        if not BINARY.is_file() and shutil.which("toxiproxy-server") is None:
            raise FileNotFoundError(f"Toxiproxy is missing ({BINARY}): run `make setup`, which builds it with go")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(proxies(settings), indent=2))

    binary = str(BINARY) if BINARY.is_file() else "toxiproxy-server"
    return ServiceSpec(
        "fault-proxy",
        [binary, "-host", "127.0.0.1", "-port", str(settings.chaos.proxy_api_port), "-config", str(config)],
        settings.chaos.proxy_api_port,
        health_url=f"{api(settings)}/version",
        prepare=render,
        description="Toxiproxy between the edge service and the broker (network faults of `vigil chaos`)",
    )


def _check(response: requests.Response, what: str) -> None:
    if not response.ok:
        raise RuntimeError(f"the fault proxy refused to {what}: HTTP {response.status_code} {response.text.strip()}")


def add_toxic(settings: Settings, name: str, kind: str, attributes: dict[str, int], stream: str, proxy: str) -> None:
    """A Toxiproxy toxic (``kind``: timeout, latency, bandwidth, ...) on one direction of ``proxy``."""
    toxic = {"name": name, "type": kind, "stream": stream, "attributes": attributes}
    _check(requests.post(f"{api(settings)}/proxies/{proxy}/toxics", json=toxic, timeout=5), f"add toxic {name}")


def remove_toxic(settings: Settings, name: str, proxy: str) -> None:
    response = requests.delete(f"{api(settings)}/proxies/{proxy}/toxics/{name}", timeout=5)
    if response.status_code != 404:
        _check(response, f"remove toxic {name}")


def blackhole(settings: Settings, proxy: str = EDGE_KAFKA) -> None:
    """Swallow every byte both ways on ``proxy``'s connections, open and new, until :func:`restore`."""
    if not routed(settings):
        raise RuntimeError(
            "the edge does not reach the broker through the fault proxy: set kafka.local_edge_port and "
            "edge.kafka_bootstrap_servers (vigil chaos does) and restart the stack"
        )
    for stream in _STREAMS:
        add_toxic(settings, f"blackhole-{stream}", "timeout", {"timeout": 0}, stream, proxy)


def restore(settings: Settings, proxy: str = EDGE_KAFKA) -> None:
    """Remove the blackhole: the path carries data again."""
    for stream in _STREAMS:
        remove_toxic(settings, f"blackhole-{stream}", proxy)
