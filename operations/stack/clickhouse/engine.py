"""The storage and query engine: one embedded chDB engine per data directory, and its connections.

chDB hosts one engine per process, kept alive by a root connection for the life of the server. Every chDB
connection ("handle") carries its own ``USE`` database and ``SET`` settings, and handles run queries concurrently.
A ClickHouse HTTP session gets a dedicated handle, so session state behaves as in ClickHouse; session-less requests
borrow a pooled handle keyed by identity and settings, so the common case never re-issues ``SET`` statements. Nothing
here knows about HTTP.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chdb

from connectors.clickhouse_access import COMBINATORS_QUERY, FUNCTIONS_QUERY, FunctionCatalogue
from operations.stack.clickhouse.errors import ClickHouseError

# ClickHouse's own default session limits, applied the same way here.
DEFAULT_SESSION_TIMEOUT_S = 60.0
MAX_SESSION_TIMEOUT_S = 3600.0
# Idle session-less handles kept for reuse (each is a chDB connection).
MAX_POOLED_HANDLES = 16


@dataclass(eq=False)
class Handle:
    """One chDB connection and the state ClickHouse keeps per session."""

    conn: Any
    database: str | None = "default"
    applied: dict[str, str] = field(default_factory=dict)
    busy: bool = False
    # Set when a statement changed state (SET/USE) that a pooled handle must not carry over.
    discard: bool = False
    last_used: float = field(default_factory=time.monotonic)
    timeout_s: float = DEFAULT_SESSION_TIMEOUT_S

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class ChdbEngine:
    """Owns the chDB engine for one data directory and hands out connections."""

    def __init__(self, data_path: Path) -> None:

        self._chdb = chdb
        self.data_path = Path(data_path).resolve()
        self.data_path.mkdir(parents=True, exist_ok=True)
        # file() and INTO OUTFILE resolve relative paths here: an empty directory of the server's own.
        self.user_files = self.data_path.parent / f"{self.data_path.name}-user-files"
        self.user_files.mkdir(parents=True, exist_ok=True)
        self._conn_str = f"{self.data_path}?user_files_path={self.user_files}"
        try:
            self._root = chdb.connect(self._conn_str)
        except Exception as exc:
            raise RuntimeError(
                f"cannot open the chDB store at {self.data_path}: {exc}. Is another Vigil ClickHouse "
                "server using this data directory? Stop it (`vigil stack down`) or pass another --data-path."
            ) from exc
        row = self._root.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = row[0].strip(), row[1].strip()
        self._lock = threading.Lock()
        self._idle: OrderedDict[tuple, list[Handle]] = OrderedDict()
        self._sessions: dict[tuple[str, str], Handle] = {}
        self._active = 0
        self._idle_cond = threading.Condition(self._lock)
        self._closed = False

    # -- handles -------------------------------------------------------------------------------
    def _new_handle(self) -> Handle:
        try:
            return Handle(self._chdb.connect(self._conn_str))
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc

    def _expire_sessions_locked(self, now: float) -> None:
        for key, handle in list(self._sessions.items()):
            if not handle.busy and now - handle.last_used > handle.timeout_s:
                del self._sessions[key]
                handle.close()

    def _pool_size_locked(self) -> int:
        return sum(len(handles) for handles in self._idle.values())

    @contextlib.contextmanager
    def acquire(
        self,
        settings: dict[str, str],
        session: tuple[str, str] | None = None,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        session_check: bool = False,
        owner: str = "",
    ) -> Iterator[Handle]:
        """A handle with ``settings`` applied: the session's own, or a pooled one.

        A session's handle is locked for the request (a concurrent request in the same session
        fails as in ClickHouse). Pooled handles return to the pool unless ``handle.discard``.
        """
        now = time.monotonic()
        pool_key = (owner, *sorted(settings.items()))  # handles are never shared across identities
        handle: Handle | None = None
        with self._lock:
            if self._closed:
                raise ClickHouseError(1001, "the server is shutting down")
            self._expire_sessions_locked(now)
            if session is not None:
                handle = self._sessions.get(session)
                if handle is None and session_check:
                    raise ClickHouseError(372, f"Session {session[1]} not found")
                if handle is not None and handle.busy:
                    raise ClickHouseError(373, f"Session {session[1]} is locked by a concurrent client.")
            else:
                bucket = self._idle.get(pool_key)
                if bucket:
                    handle = bucket.pop()
                    if not bucket:
                        del self._idle[pool_key]
            if handle is not None:
                handle.busy = True
            self._active += 1
        fresh = handle is None
        try:
            if handle is None:
                handle = self._new_handle()
                handle.busy = True
                if session is not None:
                    with self._lock:
                        if session in self._sessions:  # lost a race with a concurrent request
                            handle.close()
                            raise ClickHouseError(373, f"Session {session[1]} is locked by a concurrent client.")
                        self._sessions[session] = handle
            handle.timeout_s = session_timeout_s
            handle.discard = False
            self._apply_settings(handle, settings, revert_missing=session is not None and not fresh)
        except BaseException:
            # A pooled handle must match its pool key; a session keeps its (accurately tracked)
            # state, as a ClickHouse session survives a request with a bad setting.
            self._finish(handle, session, pool_key, discard=session is None)
            raise
        discard = False
        try:
            yield handle
        except ClickHouseError:
            raise
        except BaseException:
            discard = session is None  # e.g. the client vanished mid-insert: start clean next time
            raise
        finally:
            self._finish(handle, session, pool_key, discard or handle.discard)

    def _finish(self, handle: Handle | None, session: tuple[str, str] | None, pool_key: tuple, discard: bool) -> None:
        with self._lock:
            self._active -= 1
            if handle is not None:
                handle.busy = False
                handle.last_used = time.monotonic()
                if session is not None:
                    if self._closed:
                        handle.close()
                    elif discard and self._sessions.get(session) is handle:
                        del self._sessions[session]
                        handle.close()
                elif discard or self._closed:
                    handle.close()
                else:
                    self._idle.setdefault(pool_key, []).append(handle)
                    self._idle.move_to_end(pool_key)
                    while self._pool_size_locked() > MAX_POOLED_HANDLES:
                        oldest_key, bucket = next(iter(self._idle.items()))
                        bucket.pop(0).close()
                        if not bucket:
                            del self._idle[oldest_key]
            self._idle_cond.notify_all()

    @staticmethod
    def _apply_settings(handle: Handle, settings: dict[str, str], revert_missing: bool) -> None:
        """Bring the handle's settings to ``settings`` with as few ``SET`` statements as possible.

        ``handle.applied`` tracks every statement that succeeded, so it stays accurate on errors.
        """
        changes: list[tuple[str, str | None]] = [(k, v) for k, v in settings.items() if handle.applied.get(k) != v]
        if revert_missing:  # session handles: settings of earlier requests revert to defaults
            changes += [(k, None) for k in handle.applied if k not in settings]
        for name, value in changes:
            literal = "DEFAULT" if value is None else _quote(value)
            try:
                handle.conn.query(f"SET {_setting_name(name)} = {literal}", "TabSeparated")
            except Exception as exc:
                raise ClickHouseError.from_engine(exc) from exc
            if value is None:
                handle.applied.pop(name, None)
            else:
                handle.applied[name] = value

    def function_catalogue(self) -> FunctionCatalogue:
        """The functions a constrained identity may call, from this engine's own catalogue."""
        handle = self._new_handle()
        try:
            rows = handle.conn.query(FUNCTIONS_QUERY, "TabSeparated").bytes().decode().splitlines()
            combinators = handle.conn.query(COMBINATORS_QUERY, "TabSeparated").bytes().decode().split()
        finally:
            handle.close()
        parsed = []
        for row in rows:
            name, categories, alias, aggregate, insensitive = (row.split("\t") + ["", "", "", "0", "0"])[:5]
            parsed.append((name, categories, alias, int(aggregate or 0), int(insensitive or 0)))
        return FunctionCatalogue.from_rows(parsed, combinators)

    def close(self, wait_s: float = 10.0) -> None:
        """Let running queries finish (up to ``wait_s``), then close every connection."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            self._closed = True
            while self._active and time.monotonic() < deadline:
                self._idle_cond.wait(max(0.0, deadline - time.monotonic()))
            handles = [h for bucket in self._idle.values() for h in bucket] + list(self._sessions.values())
            self._idle.clear()
            self._sessions.clear()
        for handle in handles:
            handle.close()
        with contextlib.suppress(Exception):
            self._root.close()


def _setting_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ClickHouseError(36, f"Invalid setting name {name!r} in the request parameters")
    return name


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def error_counts(handle: Handle) -> dict[int, int]:
    """How often the engine has raised each error code (system.errors): to tell which error an insert hit."""
    rows = handle.conn.query("SELECT code, value FROM system.errors", "JSONCompactEachRow").bytes().splitlines()
    return dict(json.loads(row) for row in rows if row.strip())


def new_engine_error(handle: Handle, before: dict[int, int]) -> ClickHouseError | None:
    """The error the engine raised since ``before`` (:func:`error_counts`), as the client would see it.

    chDB's streaming insert reports success for an insert the engine refused (TOO_MANY_PARTS, for one: 0 rows
    written, no error): the reason is only in system.errors.
    """
    query = "SELECT code, value, last_error_message FROM system.errors ORDER BY last_error_time DESC"
    for row in handle.conn.query(query, "JSONCompactEachRow").bytes().splitlines():
        if row.strip():
            code, value, message = json.loads(row)
            if value > before.get(code, 0):
                return ClickHouseError(int(code), f"Code: {code}. DB::Exception: {message}")
    return None
