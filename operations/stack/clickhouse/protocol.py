"""ClickHouse's HTTP protocol in front of the engine, so an unmodified ``clickhouse-connect`` talks to it.

A request is taken apart as ClickHouse does it: the ``query`` parameter and the body are one stream, so the data of
``INSERT ... FORMAT X`` is found after the format name and streamed straight into the engine (no temp files, no
re-encoding); bodies may be chunked and compressed (lz4/zstd/gzip/deflate, several concatenated frames as
clickhouse-connect sends them). Users are authenticated and held to their identity's policies here, before the
engine runs a statement. Answers carry ClickHouse's headers and formats; errors carry its ``Code: N.
DB::Exception`` text, HTTP status and ``X-ClickHouse-Exception-Code``, so clients raise ``DatabaseError``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import hmac
import json
import logging
import re
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

import lz4.frame
import pyarrow as pa
import pyarrow.parquet as pq
from backports import zstd

from connectors.clickhouse_access import (
    AccessDenied,
    FunctionCatalogue,
    Identity,
    VigilTables,
    check_statement,
    parse_ast,
    password_sha256,
    setting_changeable,
    site_filter,
    table_filters,
)
from operations.stack.clickhouse.engine import (
    DEFAULT_SESSION_TIMEOUT_S,
    MAX_SESSION_TIMEOUT_S,
    ChdbEngine,
    Handle,
    error_counts,
    new_engine_error,
)
from operations.stack.clickhouse.errors import ClickHouseError

log = logging.getLogger("vigil.clickhouse_server")

SERVER_DISPLAY_NAME = "vigil-chdb"
# ClickHouse's own default limit, applied the same way here.
MAX_QUERY_SIZE = 256 * 1024
# Coalesce body chunks so the engine parses in large pieces rather than per network read.
INSERT_APPEND_BYTES = 16 * 1024 * 1024
# Statements other than INSERT ... FORMAT are held in memory whole.
MAX_TEXT_QUERY_BYTES = 16 * 1024 * 1024
# One request's body, as sent and after decompression (a gzip bomb stops here).
MAX_REQUEST_BYTES = 2 * 1024 * 1024 * 1024
READ_CHUNK_BYTES = 4 * 1024 * 1024

# URL parameters that are part of the HTTP protocol, not engine settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "quota_key",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "http_zlib_compression_level",
        "cancel_http_readonly_queries_on_client_close",
        "http_wait_end_of_query",
        "http_response_buffer_size",
        "add_http_cors_header",
        "http_native_compression_disable_checksumming_on_decompress",
        "stacktrace",
    }
)

_CHECK_SCOPE_RE = re.compile(r": In scope (?:SELECT formatQuery|EXPLAIN AST).*?(?= \([A-Z_]+\)$|$)", re.S)

_CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedwithnames": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedwithnamesandtypes": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "jsoncompacteachrow": "application/x-ndjson; charset=UTF-8",
    "pretty": "text/plain; charset=UTF-8",
    "prettycompact": "text/plain; charset=UTF-8",
}
# Statements that produce a result set even when it is empty (X-ClickHouse-Format is sent).
_RESULT_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK"})
# Formats chDB's Python wrapper post-processes into Python objects; never valid over HTTP.
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "arrowtable", "datastore"})

# Tokens of the SQL prefix of an INSERT: quoted strings/identifiers, comments, words, parentheses.
_SQL_TOKEN_RE = re.compile(
    rb"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`|--[^\n]*\n|#[^\n]*\n|/\*.*?\*/"
    rb"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<open>\()|(?P<close>\))",
    re.DOTALL,
)
_LEADING_NOISE_RE = re.compile(rb"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_FIRST_WORD_RE = re.compile(rb"[A-Za-z]+")
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Request bodies: chunked transfer, decompression, statement/data split
# ---------------------------------------------------------------------------------------------


def _raw_body(rfile: Any, headers: Any) -> Iterator[bytes]:
    """The request body as it arrives (Content-Length or chunked)."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        total = 0
        while True:
            line = rfile.readline(65537)
            if not line:
                raise ClickHouseError(36, "Unexpected end of chunked request body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            total += size
            if total > MAX_REQUEST_BYTES:
                raise ClickHouseError(36, f"Request body over {MAX_REQUEST_BYTES >> 20} MiB; send it in parts")
            remaining = size
            while remaining:
                piece = rfile.read(min(remaining, READ_CHUNK_BYTES))
                if not piece:
                    raise ClickHouseError(36, "Unexpected end of chunked request body")
                remaining -= len(piece)
                yield piece
            rfile.readline(3)
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        raise ClickHouseError(36, "Invalid Content-Length header") from None
    if length > MAX_REQUEST_BYTES:
        raise ClickHouseError(36, f"Request body over {MAX_REQUEST_BYTES >> 20} MiB; send it in parts")
    while length > 0:
        piece = rfile.read(min(length, READ_CHUNK_BYTES))
        if not piece:
            raise ClickHouseError(36, "Unexpected end of request body")
        length -= len(piece)
        yield piece


def _decompressor_factory(encoding: str) -> Callable[[], Any] | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return lambda: zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, auto-detected
    if encoding == "lz4":
        return lz4.frame.LZ4FrameDecompressor
    if encoding == "zstd":
        return zstd.ZstdDecompressor
    raise ClickHouseError(36, f"Unsupported Content-Encoding {encoding!r}; use lz4, zstd, gzip or deflate")


def _decompressed(chunks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """Decompress a stream that may hold several concatenated frames (one per insert block)."""
    factory = _decompressor_factory(encoding)
    if factory is None:
        yield from chunks
        return
    decoder = factory()
    in_frame = False
    total = 0
    try:
        for chunk in chunks:
            data = chunk
            while data:
                in_frame = True
                for out in _inflate(decoder, data):
                    total += len(out)
                    if total > MAX_REQUEST_BYTES:
                        raise ClickHouseError(
                            271, f"The {encoding} request body decompresses to over {MAX_REQUEST_BYTES >> 20} MiB"
                        )
                    yield out
                if decoder.eof:  # frame complete; anything after it starts the next frame
                    data = decoder.unused_data
                    decoder = factory()
                    in_frame = False
                else:
                    data = b""
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError(271, f"Cannot decompress the {encoding} request body: {exc}") from exc
    if in_frame:
        raise ClickHouseError(271, f"The {encoding} request body ends in the middle of a compressed frame")


def _inflate(decoder: Any, data: bytes) -> Iterator[bytes]:
    """Decompress ``data`` in pieces of at most READ_CHUNK_BYTES, so a small bomb never becomes one huge buffer."""
    if hasattr(decoder, "unconsumed_tail"):  # zlib
        out = decoder.decompress(data, READ_CHUNK_BYTES)
        if out:
            yield out
        while decoder.unconsumed_tail and not decoder.eof:
            out = decoder.decompress(decoder.unconsumed_tail, READ_CHUNK_BYTES)
            if out:
                yield out
        return
    out = decoder.decompress(data, max_length=READ_CHUNK_BYTES)  # lz4 frame, zstd
    if out:
        yield out
    while not decoder.eof and not decoder.needs_input:
        out = decoder.decompress(b"", max_length=READ_CHUNK_BYTES)
        if not out:
            break
        yield out


@dataclass
class _Statement:
    """What to execute: a whole query, or an INSERT whose data streams in a given format."""

    sql: bytes
    insert_format: str | None = None
    data: Iterator[bytes] | None = None


class _Buffer:
    """The start of the request stream, read on demand."""

    def __init__(self, head: bytes, body: Iterator[bytes]) -> None:
        self.buf = bytearray(head)
        self.body = body
        self.exhausted = False

    def more(self) -> bool:
        for piece in self.body:
            self.buf.extend(piece)
            return True
        self.exhausted = True
        return False

    def rest(self, start: int) -> Iterator[bytes]:
        if start < len(self.buf):
            yield bytes(self.buf[start:])
        yield from self.body


def _split_statement(head: bytes, body: Iterator[bytes]) -> _Statement:
    """Find the SQL text and, for ``INSERT ... FORMAT X``, where the data begins.

    ClickHouse reads the ``query`` parameter (plus a newline) followed by the body as one
    stream; the data of an INSERT starts after the format name: after the first newline if
    there is one, otherwise after all the whitespace.
    """
    stream = _Buffer(head, body)
    while len(stream.buf) < 64 and stream.more():
        pass
    if _first_keyword(bytes(stream.buf[:4096])) != "INSERT":
        return _Statement(_read_all(stream))
    while True:
        found = _find_insert_format(bytes(stream.buf[:MAX_QUERY_SIZE]))
        if found is _NO_FORMAT or (found is None and (stream.exhausted or len(stream.buf) >= MAX_QUERY_SIZE)):
            return _Statement(_read_all(stream))  # INSERT ... VALUES / SELECT: one query
        if isinstance(found, tuple) and (found[2] < len(stream.buf) or stream.exhausted):
            break
        stream.more()
    fmt_start, fmt_name, pos = found
    while True:
        if pos == len(stream.buf):
            if not stream.more():
                break
            continue
        char = stream.buf[pos]
        if char == 0x0A:
            pos += 1
            break
        if char not in b" \t\r":
            break
        pos += 1
    return _Statement(bytes(stream.buf[:fmt_start]).rstrip(), fmt_name, stream.rest(pos))


def _read_all(stream: _Buffer) -> bytes:
    while stream.more():
        if len(stream.buf) > MAX_TEXT_QUERY_BYTES:
            raise ClickHouseError(36, f"Query text over {MAX_TEXT_QUERY_BYTES >> 20} MiB; send data with FORMAT")
    return bytes(stream.buf)


_NO_FORMAT = object()


def _holds_rows(fmt: str, data: bytes | None, size: int) -> bool:
    """Whether an insert's data holds at least one row; ``data`` None (too large to keep): surely it does."""
    if size == 0:
        return False
    if data is None:
        return True
    name = fmt.lower()
    try:
        if name == "native":  # a block starts with varints: number of columns, number of rows
            _, at = _varint(data, 0)
            return _varint(data, at)[0] > 0
        if name in ("arrow", "arrowstream"):
            reader = pa.ipc.open_file(data) if name == "arrow" else pa.ipc.open_stream(data)
            return reader.read_all().num_rows > 0
        if name == "parquet":
            return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows > 0
    except (IndexError, pa.ArrowInvalid):
        return True  # unreadable here: the engine's own error, if any, stands
    return bool(data.strip())  # text formats: anything but white space is a row


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _find_insert_format(text: bytes) -> tuple[int, str, int] | object | None:
    """Locate an INSERT's top-level ``FORMAT name``: (offset of FORMAT, name, offset after name).

    Returns ``_NO_FORMAT`` when the statement is an ``INSERT ... VALUES/SELECT`` and ``None``
    when more text is needed to tell.
    """
    depth = 0
    format_at: int | None = None
    for match in _SQL_TOKEN_RE.finditer(text):
        word = match.group("word")
        if format_at is not None:
            return (format_at, word.decode(), match.end()) if word is not None else _NO_FORMAT
        if match.group("open"):
            depth += 1
        elif match.group("close"):
            depth -= 1
        elif word is not None and depth == 0:
            upper = word.upper()
            if upper == b"FORMAT":
                format_at = match.start()
            elif upper in (b"VALUES", b"SELECT", b"WITH"):
                return _NO_FORMAT
    return None


def _first_keyword(sql: bytes) -> str:
    start = _LEADING_NOISE_RE.match(sql).end()  # type: ignore[union-attr]
    match = _FIRST_WORD_RE.match(sql, start)
    return match.group(0).decode().upper() if match else ""


def _parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    """Form fields of a multipart/form-data request (clickhouse-connect's form-encoded queries)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise ClickHouseError(
                48,
                "External data (temporary tables sent with the query) is not supported by the Vigil chDB "
                "server; insert the data into a table first",
            )
        if name:
            payload = part.get_payload(decode=True) or b""
            fields[str(name)] = payload.decode("utf-8")
    return fields


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """A ClickHouse user of this server: the identity it is and the SHA-256 of its password."""

    identity: Identity
    password_sha256: str


@dataclass(frozen=True)
class ServerConfig:
    accounts: dict[str, Account]  # by user name
    tables: VigilTables
    catalogue: FunctionCatalogue | None = None


class ClickHouseService(Protocol):
    """What a handler needs of the HTTP server it runs in."""

    engine: ChdbEngine
    config: ServerConfig


def _lowers(identity: Identity, name: str, value: str) -> bool:
    """A numeric limit of the identity's profile may be lowered by a query (ClickHouse's MAX constraint)."""
    limit = identity.limits.get(name)
    if limit is None or not limit.isdigit():
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    return 0 < number <= float(limit)


def _tsv_escape(value: str) -> str:
    """A query parameter's value as the engine reads it (escaped like TabSeparated)."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0")
    )


class ClickHouseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse-chDB"
    # TCP_NODELAY: a response goes out as headers, then body. With Nagle's algorithm on, the body waited for the
    # client's delayed ACK of the headers, ~40 ms on every query (clickhouse-connect's SELECT 1 took 48 ms, 5 ms
    # with this).
    disable_nagle_algorithm = True
    timeout = 600  # idle keep-alive connections are dropped after this
    server: ClickHouseService  # the HTTP server this handler runs in

    # -- plumbing --------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler API
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes | memoryview, headers: dict[str, str]) -> None:
        self.send_response(status)
        headers.setdefault("Content-Type", "text/plain; charset=UTF-8")
        headers["X-ClickHouse-Server-Display-Name"] = SERVER_DISPLAY_NAME
        headers["Content-Length"] = str(len(body))
        headers["Keep-Alive"] = f"timeout={self.timeout}"
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, error: ClickHouseError, query_id: str = "") -> None:
        body = f"{error.message} (version {self.server.engine.version})\n".encode()
        headers = {"X-ClickHouse-Exception-Code": str(error.code)}
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        self._send(error.status, body, headers)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._send(204, b"", {"Allow": "GET, POST, HEAD, OPTIONS"})

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        params = dict(pairs)
        self._roles = [value for key, value in pairs if key == "role"]  # ClickHouse takes role=a&role=b
        if path in ("/ping", "/replicas_status") or (path == "/" and self.command != "POST" and "query" not in params):
            self._drain_quietly()
            self._send(200, b"Ok.\n", {})
            return
        if path != "/":
            self._drain_quietly()
            self._send_error(ClickHouseError(36, f"There is no handle {url.path}. Use / or /ping", status=404))
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        started = time.perf_counter()
        self._sql = b""
        try:
            user, identity = self._authenticate(params)
            self._handle_query(user, identity, params, query_id, started)
        except ClickHouseError as error:
            self._log_error(error, params)
            self._abandon_body()
            self._send_error(error, query_id)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug here must still answer like ClickHouse, and be visible
            log.exception("internal error serving %s", self.path)
            self._abandon_body()
            self._send_error(ClickHouseError(1001, f"Internal server error: {type(exc).__name__}: {exc}"), query_id)

    def _log_error(self, error: ClickHouseError, params: dict[str, str]) -> None:
        query = (params.get("query") or self._sql.decode("utf-8", "replace")).strip()[:300]
        log.warning(
            "query failed for %s (HTTP %d): %s%s",
            self.client_address[0],
            error.status,
            error.message[:2000],
            f" | query: {query}" if query else "",
        )

    # -- body handling -----------------------------------------------------------------------------
    _body_iter: Iterator[bytes] | None = None
    _roles: list[str] = []  # noqa: RUF012 - replaced per request, never mutated
    _sql: bytes = b""  # the statement being served, for error logs

    def _drain_quietly(self) -> None:
        with contextlib.suppress(Exception):
            for _ in _raw_body(self.rfile, self.headers):
                pass

    def _abandon_body(self) -> None:
        """After an error, consume what is left of the body so the connection can be reused."""
        remaining = self._body_iter
        self._body_iter = None
        try:
            if remaining is None:
                remaining = _raw_body(self.rfile, self.headers)
            for _ in remaining:
                pass
        except Exception:
            self.close_connection = True

    # -- auth ------------------------------------------------------------------------------------
    def _authenticate(self, params: dict[str, str]) -> tuple[str, Identity]:
        user, password = "default", ""
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise ClickHouseError(516, "Malformed Basic authorization header") from None
        if self.headers.get("X-ClickHouse-User") is not None:
            user = self.headers["X-ClickHouse-User"]
            password = self.headers.get("X-ClickHouse-Key", "")
        if "user" in params:
            user, password = params["user"], params.get("password", "")
        account = self.server.config.accounts.get(user)
        expected = account.password_sha256 if account else "0" * 64  # same work for an unknown user
        if not hmac.compare_digest(password_sha256(password), expected) or account is None:
            raise ClickHouseError(
                516,
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name.",
            )
        return user, account.identity

    # -- queries ---------------------------------------------------------------------------------
    def _handle_query(
        self, user: str, identity: Identity, params: dict[str, str], query_id: str, started: float
    ) -> None:
        content_type = self.headers.get("Content-Type") or ""
        body = _raw_body(self.rfile, self.headers)
        self._body_iter = body
        if content_type.lower().startswith("multipart/form-data"):
            form = _parse_multipart(content_type, b"".join(body))
            params = {**params, **form}
            body = iter(())
        if params.get("decompress") in ("1", "true"):
            raise ClickHouseError(
                48, "decompress=1 (ClickHouse native block compression) is not supported; use Content-Encoding"
            )
        encoding = self.headers.get("Content-Encoding") or ""
        body = _decompressed(body, encoding)

        head = params.get("query", "").encode()
        if head:
            head += b"\n"
        statement = _split_statement(head, body)
        self._sql = statement.sql
        if not statement.sql.strip():
            raise ClickHouseError(62, "Empty query")

        query_params = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        database = params.get("database")
        config = self.server.config
        if not identity.unrestricted:
            # The identity's settings profile: nothing the client sends can change its limits or site filter.
            fixed = sorted(k for k, v in settings.items() if not setting_changeable(k) and not _lowers(identity, k, v))
            if fixed:
                raise ClickHouseError(
                    164,
                    f"Cannot modify {', '.join(fixed)}: the settings profile of ClickHouse identity "
                    f"{identity.name!r} fixes it (only data-format settings may be sent)",
                    status=403,
                )
            if database and database != config.tables.database:
                raise ClickHouseError(497, f"{user}: Not enough privileges to use database {database}")
            database = config.tables.database
        settings = {**identity.limits, **settings}  # a client's value here only lowers a limit (checked above)
        if identity.site_scoped:
            roles = [r for value in self._roles for r in value.split(",")]
            condition = site_filter(roles)
            if condition is not None:
                settings["additional_table_filters"] = table_filters(config.tables, condition)
        session = (user, params["session_id"]) if params.get("session_id") else None
        try:
            session_timeout = float(params.get("session_timeout") or DEFAULT_SESSION_TIMEOUT_S)
        except ValueError:
            raise ClickHouseError(36, f"Invalid session_timeout {params['session_timeout']!r}") from None
        if not 0 < session_timeout <= MAX_SESSION_TIMEOUT_S:
            raise ClickHouseError(36, f"session_timeout must be in (0, {MAX_SESSION_TIMEOUT_S:.0f}] seconds")
        default_format = params.get("default_format") or "TabSeparated"
        if default_format.lower() in _PYTHON_ONLY_FORMATS:
            raise ClickHouseError(73, f"Unknown format {default_format}", status=404)
        keyword = _first_keyword(statement.sql)

        engine = self.server.engine
        check_session = params.get("session_check") in ("1", "true")
        with engine.acquire(settings, session, session_timeout, check_session, owner=user) as handle:
            wanted_db = database or (None if session else "default")
            if wanted_db and wanted_db != handle.database:
                try:
                    handle.conn.query(f"USE `{wanted_db.replace('`', '')}`", "TabSeparated")
                except Exception as exc:
                    raise ClickHouseError.from_engine(exc) from exc
                handle.database = wanted_db
            checked = statement.sql
            if statement.insert_format is not None:  # the data follows; the statement ends with its format
                checked += b" FORMAT " + statement.insert_format.encode()
            self._check_statement(handle, identity, checked, query_params)
            if statement.insert_format is not None:
                result = self._stream_insert(handle, statement)
                response = b""
                summary = {
                    "read_rows": str(result.rows_written),
                    "read_bytes": str(result.bytes_written),
                    "written_rows": str(result.rows_written),
                    "written_bytes": str(result.bytes_written),
                }
                out_format = None
            else:
                sql = statement.sql.decode("utf-8", errors="surrogateescape")
                try:
                    result = handle.conn.query(sql, default_format, params=query_params)
                except Exception as exc:
                    raise ClickHouseError.from_engine(exc) from exc
                finally:
                    if keyword in ("USE", "SET"):  # connection state changed behind our back
                        handle.discard = session is None
                        if keyword == "USE":
                            handle.database = None
                response = result.get_memview().view() if len(result) else b""
                summary = {
                    "read_rows": str(result.rows_read()),
                    "read_bytes": str(result.bytes_read()),
                    "written_rows": str(result.rows_written()),
                    "written_bytes": str(result.bytes_written()),
                }
                match = _TRAILING_FORMAT_RE.search(sql)
                out_format = match.group(1) if match else default_format
                if not len(response) and keyword not in _RESULT_STATEMENTS:
                    out_format = None
        self._body_iter = None
        summary.update(total_rows_to_read="0", elapsed_ns=str(int((time.perf_counter() - started) * 1e9)))
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": engine.timezone,
            "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
        }
        if session:
            headers["X-ClickHouse-Session-Id"] = session[1]
        if out_format:
            headers["X-ClickHouse-Format"] = out_format
            headers["Content-Type"] = _CONTENT_TYPES.get(out_format.lower(), "application/octet-stream")
        self._send(200, response, headers)

    def _check_statement(self, handle: Handle, identity: Identity, sql_bytes: bytes, params: dict[str, str]) -> None:
        """Parse with the engine's own parser and refuse what ``identity`` may not run.

        formatQuery takes the text as a value, so it cannot execute anything, and it refuses a second statement
        (the engine would otherwise run every statement of ``SELECT 1; INSERT ...``); the single statement it
        returns is then explained as a tree."""
        sql = sql_bytes.decode("utf-8", errors="surrogateescape")
        try:
            formatted = (
                handle.conn.query(
                    "SELECT formatQuery({vigil_sql:String})", "TabSeparatedRaw", params={"vigil_sql": _tsv_escape(sql)}
                )
                .bytes()
                .decode()
                .rstrip("\n")
            )
            ast = handle.conn.query(f"EXPLAIN AST {formatted}", "TabSeparatedRaw", params=params).bytes().decode()
            existing: list[str] = []
            if not identity.unrestricted:
                existing = (
                    handle.conn.query(
                        "SELECT name FROM system.tables WHERE database = {vigil_db:String}",
                        "TabSeparatedRaw",
                        params={"vigil_db": self.server.config.tables.database},
                    )
                    .bytes()
                    .decode()
                    .split()
                )
        except Exception as exc:
            error = ClickHouseError.from_engine(exc)
            error.message = _CHECK_SCOPE_RE.sub("", error.message)  # the engine names our wrapper query
            raise error from exc
        try:
            root = parse_ast(ast.splitlines())
            check_statement(root, identity, self.server.config.tables.database, existing, self.server.config.catalogue)
        except AccessDenied as exc:
            raise ClickHouseError(497, f"{exc} (ACCESS_DENIED)", status=403) from None

    def _stream_insert(self, handle: Handle, statement: _Statement) -> Any:
        sql = statement.sql.decode("utf-8", errors="surrogateescape")
        errors_before = error_counts(handle)
        try:
            inserter = handle.conn.send_insert(sql, statement.insert_format)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc
        try:
            pending: list[bytes] = []
            size = total = 0
            assert statement.data is not None
            for piece in statement.data:
                pending.append(piece)
                size += len(piece)
                total += len(piece)
                if size >= INSERT_APPEND_BYTES:
                    inserter.append(b"".join(pending) if len(pending) > 1 else pending[0])
                    pending, size = [], 0
            data = b"".join(pending) if total == size else None  # whole (small) inserts only: to count rows
            if pending:
                inserter.append(data if data is not None else b"".join(pending))
            result = inserter.finish()
            if result.rows_written == 0 and _holds_rows(statement.insert_format or "", data, total):
                # The engine refused the insert but its streaming API said nothing: never answer OK for it. (A
                # block de-duplicated by its token also writes 0 rows, with no error: that one is an OK.)
                error = new_engine_error(handle, errors_before)
                if error is not None:
                    raise error
            return result
        except ClickHouseError:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise
        except Exception as exc:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise ClickHouseError.from_engine(exc) from exc
