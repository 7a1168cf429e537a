"""The local ClickHouse server process: the HTTP server, its workers, start/stop and the command line.

One process owns the data directory (chDB hosts one engine per process), so the server is a child process that the
stack and the tests start by module name and stop with SIGTERM, which lets running queries finish and closes the
store cleanly.

Run: ``python -m operations.stack.clickhouse.server --host H --port 18123 --data-path DIR`` (users and passwords
come from ``settings.clickhouse``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import requests

from connectors.clickhouse import vigil_tables
from connectors.clickhouse_access import ensure_passwords, identities, password_sha256, read_password
from operations.stack.clickhouse.engine import ChdbEngine
from operations.stack.clickhouse.protocol import Account, ClickHouseHandler, ServerConfig
from vigil.logs import setup_logging
from vigil.settings import Settings
from vigil.signals import stop_event_on_signals

log = logging.getLogger("vigil.clickhouse_server")

# Requests served at once, and connections waiting for a worker beyond them (more are answered 503).
MAX_WORKERS = 128
MAX_WAITING = 512
# Passwords a server listening beyond loopback refuses.
WEAK_PASSWORDS = frozenset({"", "vigil", "default", "password", "clickhouse", "admin"})
MIN_REMOTE_PASSWORD_CHARS = 16


class ClickHouseHTTPServer(HTTPServer):
    """HTTP/1.1 server with a bounded pool of workers: MAX_WORKERS connections served at once, MAX_WAITING
    queued for a worker; beyond that a connection is answered 503 at once instead of costing a thread.
    Workers are daemon threads, so an idle keep-alive connection never holds up shutdown."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        engine: ChdbEngine,
        config: ServerConfig,
        max_workers: int = MAX_WORKERS,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.engine = engine
        self.config = config
        self._waiting: queue.Queue[tuple[Any, Any]] = queue.Queue(max_waiting)
        super().__init__(address, ClickHouseHandler)
        for number in range(max_workers):
            threading.Thread(target=self._work, name=f"clickhouse-http-{number}", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self._waiting.put_nowait((request, client_address))
        except queue.Full:
            body = b"Code: 202. DB::Exception: Too many simultaneous connections; retry later\n"
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
            self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            request, client_address = self._waiting.get()
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def load_accounts(settings: Settings) -> dict[str, Account]:
    """Every identity's account, creating missing password files (the first start of the local stack)."""
    ch = settings.clickhouse
    assert ch.secrets_dir is not None
    ensure_passwords(ch.secrets_dir)
    accounts = {}
    for name, identity in identities(vigil_tables(ch)).items():
        accounts[ch.user(name)] = Account(identity, password_sha256(read_password(ch.secrets_dir, name)))
    return accounts


def _check_bind(host: str, settings: Settings) -> None:
    """Beyond loopback, every password must be a real one (the files may have been written by hand)."""
    if host in ("localhost", "::1") or host.startswith("127."):
        return
    ch = settings.clickhouse
    assert ch.secrets_dir is not None
    for name in ch.users:
        password = read_password(ch.secrets_dir, name)
        if password.lower() in WEAK_PASSWORDS or len(password) < MIN_REMOTE_PASSWORD_CHARS:
            raise RuntimeError(
                f"refusing to listen on {host}: identity {name!r} has an empty, default or short password "
                f"({ch.password_file(name)}); write at least {MIN_REMOTE_PASSWORD_CHARS} random characters there, "
                "or bind to 127.0.0.1"
            )


def serve(host: str, port: int, data_path: Path, settings: Settings, stop: threading.Event) -> None:
    """Serve until ``stop`` is set, then finish in-flight queries and close the store cleanly."""
    accounts = load_accounts(settings)
    _check_bind(host, settings)
    engine = ChdbEngine(data_path)
    os.chdir(engine.user_files)  # relative file paths of the engine resolve into the empty directory
    config = ServerConfig(accounts, vigil_tables(settings.clickhouse), engine.function_catalogue())
    try:
        server = ClickHouseHTTPServer((host, port), engine, config)
    except OSError as exc:
        engine.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc}. Is another server using this port?") from exc
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log.info(
        "ClickHouse HTTP interface (chDB engine %s) listening on http://%s:%d, data in %s, users %s",
        engine.version,
        host,
        port,
        engine.data_path,
        ", ".join(sorted(accounts)),
    )
    try:
        stop.wait()
    finally:
        log.info("shutting down: finishing running queries")
        server.shutdown()
        server.server_close()
        engine.close()
        log.info("ClickHouse server stopped")


def start_clickhouse_server_process(
    settings: Settings, log_path: Path, timeout: float = 60.0, data_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the server as a child process with ``settings`` and wait until it answers ``/ping``.

    Output goes to ``log_path``. Raises with the log's tail if it exits or does not come up.
    """

    ch = settings.clickhouse
    data_path = data_path or settings.data_dir / "clickhouse"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env()}
    cmd = [
        sys.executable,
        "-m",
        "operations.stack.clickhouse.server",
        "--host",
        ch.host,
        "--port",
        str(ch.port),
        "--data-path",
        str(data_path),
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://{ch.host}:{ch.port}/ping"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).text == "Ok.\n":
                return proc
        time.sleep(0.1)
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise RuntimeError(f"ClickHouse server did not come up on {ch.host}:{ch.port} (log {log_path}):\n{tail}")


def stop_clickhouse_server_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM the server (it finishes running queries and closes the store), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("ClickHouse server pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait(10)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:

    settings = Settings()
    ch = settings.clickhouse
    parser = argparse.ArgumentParser(
        description="ClickHouse HTTP interface over embedded chDB (users and passwords: settings.clickhouse)"
    )
    parser.add_argument("--host", default=ch.host)
    parser.add_argument("--port", type=int, default=ch.port)
    parser.add_argument("--data-path", type=Path, default=settings.data_dir / "clickhouse")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    stop = stop_event_on_signals()
    try:
        serve(args.host, args.port, args.data_path.resolve(), settings, stop)
    except (RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
