"""Local stand-in for the third-party SaaS the relay talks to: Slack incoming webhooks and a Twilio-compatible
SMS API, on ``settings.alerting.standin_port``, and (with ``--smtp-port``) an SMTP server. For the demo, the
tests and the latency benchmark: nothing leaves the machine.

* ``POST /slack/<anything>``: answers 200 ``ok`` like Slack (400 ``invalid_payload`` / ``no_text`` for bodies
  Slack would refuse).
* ``POST /api/chat.postMessage``: Slack's Web API as a bot sees it: a ``Bearer xoxb-...`` token (else
  ``invalid_auth``), a channel, text or blocks (``no_text``), a ``thread_ts`` the stand-in issued in that
  channel (``thread_not_found``); errors are HTTP 200 with ``ok: false`` like Slack's. Answers ``ok``, the
  channel's ID (a name such as ``#vigil-alerts`` gets a stable ``C...`` ID) and the message's ``ts``.
* ``POST /2010-04-01/Accounts/<sid>/Messages.json``: checks basic auth and To/From/Body like Twilio and answers
  201 with a Twilio-like JSON message resource (``sid`` ``SM...``).
* Every request is recorded (time received, method, path, headers, body, parsed JSON or form, the answer) in
  memory and appended to a JSONL file; ``GET /requests[?path_prefix=...]`` returns them, ``DELETE /requests``
  forgets them (the file keeps them).
* ``POST /control`` queues failures for the next N requests under a path prefix:
  ``{"path_prefix": "/slack/", "count": 2, "status": 500}``, ``{"status": 429, "retry_after": "1"}``,
  ``{"delay_s": 10}`` (answer late: a client timeout), ``{"reset": true}`` clears them.
* SMTP (aiosmtpd): every accepted e-mail is recorded like a request, with path ``/smtp``, ``mail_from``,
  ``rcpt_tos``, ``subject`` and the message as ``body``.

Run: ``python -m operations.stack.saas_standin --port P --record FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email
import email.policy
import logging
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from vigil.logs import setup_logging
from vigil.settings import get_settings

if TYPE_CHECKING:
    from vigil.settings import Settings

log = logging.getLogger("vigil.saas_standin")

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_DEFAULT_FAULT_BODY = {429: "rate_limited", 500: "internal_error", 503: "service_unavailable", 400: "invalid_payload"}


class ControlRequest(BaseModel):
    """A failure mode for the next ``count`` requests whose path starts with ``path_prefix``."""

    path_prefix: str = "/"
    count: int = Field(1, ge=1)
    status: int | None = Field(None, ge=100, le=599)  # None: answer normally (after delay_s)
    retry_after: str | None = None  # Retry-After header (seconds or HTTP date)
    delay_s: float = Field(0.0, ge=0)  # wait before answering (longer than the client's timeout = a timeout)
    body: str | None = None
    reset: bool = False  # forget queued failures (under path_prefix, or all when it is "/")


@dataclass
class Fault:
    status: int | None
    retry_after: str | None
    delay_s: float
    body: str | None
    remaining: int


class StandIn:
    """The recorded requests and queued failures (one event loop; the lock guards the JSONL file)."""

    def __init__(self, record_path: Path | None = None) -> None:
        self.record_path = record_path
        self.records: list[dict[str, Any]] = []
        self.faults: dict[str, deque[Fault]] = {}
        self._file_lock = threading.Lock()
        if record_path is not None:
            record_path.parent.mkdir(parents=True, exist_ok=True)

    def control(self, request: ControlRequest) -> None:
        if request.reset:
            for prefix in list(self.faults):
                if prefix.startswith(request.path_prefix):
                    del self.faults[prefix]
            return
        fault = Fault(request.status, request.retry_after, request.delay_s, request.body, request.count)
        self.faults.setdefault(request.path_prefix, deque()).append(fault)

    def take_fault(self, path: str) -> Fault | None:
        """The queued failure for this path (longest matching prefix first), consuming one of its count."""
        for prefix in sorted(self.faults, key=len, reverse=True):
            queue = self.faults[prefix]
            if path.startswith(prefix) and queue:
                fault = queue[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.popleft()
                return fault
        return None

    def record(self, request: Request, body: bytes, parsed: dict[str, Any], response: dict[str, Any]) -> None:
        self.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": str(request.url.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(errors="replace"),
                **parsed,
                "response": response,
            }
        )

    def append(self, fields: dict[str, Any]) -> None:
        """Record one request (HTTP or SMTP; called from the event loop and the SMTP thread)."""
        with self._file_lock:
            entry = {"seq": len(self.records) + 1, "received_at": time.time(), **fields}
            self.records.append(entry)
            if self.record_path is not None:
                with self.record_path.open("ab") as out:
                    out.write(orjson.dumps(entry) + b"\n")


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


def _slack_answer(body: bytes) -> tuple[dict[str, Any], int, str]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}, 400, "invalid_payload"
    if not isinstance(payload, dict):
        return {}, 400, "invalid_payload"
    if not payload.get("text") and not payload.get("blocks"):
        return {"json": payload}, 400, "no_text"
    return {"json": payload}, 200, "ok"


class _SlackApi:
    """The stand-in's Slack workspace: channel IDs by name and the ts of every message, to check thread_ts."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.messages: set[tuple[str, str]] = set()  # (channel ID, ts)
        self.seq = 0
        self.lock = threading.Lock()

    def channel_id(self, channel: str) -> str:
        if re.fullmatch(r"[CGD][A-Z0-9]{8,}", channel):
            return channel
        with self.lock:
            return self.ids.setdefault(channel, f"C{len(self.ids) + 1:010d}")

    def answer(self, request: Request, body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        auth = request.headers.get("authorization", "")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {}, {"ok": False, "error": "invalid_json"}
        if not isinstance(payload, dict):
            return {}, {"ok": False, "error": "invalid_json"}
        parsed = {"json": payload}
        if not auth.startswith("Bearer xoxb-"):
            return parsed, {"ok": False, "error": "invalid_auth"}
        channel = str(payload.get("channel") or "")
        if not channel:
            return parsed, {"ok": False, "error": "channel_not_found"}
        if not payload.get("text") and not payload.get("blocks"):
            return parsed, {"ok": False, "error": "no_text"}
        cid = self.channel_id(channel)
        thread_ts = payload.get("thread_ts")
        with self.lock:
            if thread_ts and (cid, str(thread_ts)) not in self.messages:
                return parsed, {"ok": False, "error": "thread_not_found"}
            self.seq += 1
            ts = f"{int(time.time())}.{self.seq:06d}"
            self.messages.add((cid, ts))
        return parsed, {"ok": True, "channel": cid, "ts": ts, "message": {"ts": ts, "thread_ts": thread_ts or ts}}


def _twilio_answer(sid: str, request: Request, body: bytes) -> tuple[dict[str, Any], int, dict[str, Any]]:
    form = dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
    parsed: dict[str, Any] = {"form": form}
    auth = _basic_auth(request.headers.get("authorization"))
    if auth is None or auth[0] != sid or not auth[1]:
        return parsed, 401, {"code": 20003, "message": "Authenticate", "status": 401}
    for field, code in (("To", 21604), ("From", 21603), ("Body", 21602)):
        if not form.get(field):
            return parsed, 400, {"code": code, "message": f"A '{field}' is required.", "status": 400}
    if not _E164.match(form["To"]):
        message = f"The 'To' number {form['To']} is not a valid phone number."
        return parsed, 400, {"code": 21211, "message": message, "status": 400}
    message_sid = "SM" + uuid.uuid4().hex
    resource = {
        "sid": message_sid,
        "account_sid": sid,
        "to": form["To"],
        "from": form["From"],
        "body": form["Body"],
        "status": "queued",
        "num_segments": str(max(1, -(-len(form["Body"]) // 153))),
        "date_created": formatdate(usegmt=True),
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": f"/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json",
    }
    return parsed, 201, resource


class _SmtpRecorder:
    """aiosmtpd handler: records each accepted e-mail into the stand-in's request log (path ``/smtp``)."""

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 -- aiosmtpd hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.standin.append(
            {
                "method": "SMTP",
                "path": "/smtp",
                "query": "",
                "headers": {k.lower(): str(v) for k, v in message.items()},
                "body": envelope.content.decode(errors="replace"),
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "subject": str(message.get("Subject", "")),
                "response": {"status": 250, "headers": {}, "delay_s": 0.0},
            }
        )
        return "250 Message accepted for delivery"


def start_smtp(standin: StandIn, host: str, port: int) -> Any:
    """An SMTP server on ``host:port`` (its own thread) recording into ``standin``; ``.stop()`` ends it."""

    controller = Controller(_SmtpRecorder(standin), hostname=host, port=port)
    controller.start()
    return controller


def create_app(record_path: Path | None = None, smtp: tuple[str, int] | None = None) -> FastAPI:
    standin = StandIn(record_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        controller = start_smtp(standin, *smtp) if smtp else None
        try:
            yield
        finally:
            if controller is not None:
                controller.stop()

    app = FastAPI(title="Vigil SaaS stand-in (Slack, Twilio SMS, SMTP)", lifespan=lifespan)
    app.state.standin = standin

    async def answer(request: Request, parsed: dict[str, Any], status: int, content: Any) -> Response:
        body = await request.body()
        fault = standin.take_fault(request.url.path)
        headers: dict[str, str] = {}
        if fault is not None and fault.status is not None:
            status = fault.status
            content = fault.body if fault.body is not None else _DEFAULT_FAULT_BODY.get(status, "error")
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
        standin.record(
            request, body, parsed, {"status": status, "headers": headers, "delay_s": fault.delay_s if fault else 0.0}
        )
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if isinstance(content, dict):
            return JSONResponse(content, status, headers=headers)
        return PlainTextResponse(str(content), status, headers=headers)

    @app.post("/slack/{rest:path}")
    async def slack(rest: str, request: Request) -> Response:
        parsed, status, text = _slack_answer(await request.body())
        return await answer(request, parsed, status, text)

    slack_api = _SlackApi()

    @app.post("/api/chat.postMessage")
    async def slack_post_message(request: Request) -> Response:
        parsed, content = slack_api.answer(request, await request.body())
        return await answer(request, {**parsed, "slack_answer": content}, 200, content)

    @app.post("/2010-04-01/Accounts/{sid}/Messages.json")
    async def twilio(sid: str, request: Request) -> Response:
        parsed, status, content = _twilio_answer(sid, request, await request.body())
        return await answer(request, parsed, status, content)

    @app.get("/requests")
    async def requests(path_prefix: str = "/", since_seq: int = 0) -> JSONResponse:
        return JSONResponse([r for r in standin.records if r["path"].startswith(path_prefix) and r["seq"] > since_seq])

    @app.delete("/requests")
    async def forget() -> JSONResponse:
        standin.records.clear()
        return JSONResponse({"cleared": True})

    @app.post("/control")
    async def control(request: ControlRequest) -> JSONResponse:
        standin.control(request)
        return JSONResponse({prefix: [asdict(f) for f in queue] for prefix, queue in standin.faults.items()})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "requests": len(standin.records)})

    return app


def argv(settings: Settings, record_path: Path) -> list[str]:
    """Command line that runs the stand-in for ``settings`` (for the stack's process manager)."""

    return [
        sys.executable,
        "-m",
        "operations.stack.saas_standin",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.alerting.standin_port),
        "--smtp-port",
        str(settings.alerting.standin_smtp_port),
        "--record",
        str(record_path),
    ]


def main(args: list[str] | None = None) -> int:

    settings = get_settings()
    parser = argparse.ArgumentParser(description="Local stand-in for Slack webhooks and the Twilio SMS API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=settings.alerting.standin_port)
    parser.add_argument(
        "--record",
        type=Path,
        default=settings.logs_dir / "saas_standin.jsonl",
        help="JSONL file every request is appended to",
    )
    parser.add_argument("--smtp-port", type=int, default=0, help="also accept e-mail on this port (0: no SMTP)")
    parser.add_argument("--log-level", default="INFO")
    options = parser.parse_args(args)
    setup_logging(options.log_level)
    log.info("SaaS stand-in on %s:%d, recording to %s", options.host, options.port, options.record)
    smtp = (options.host, options.smtp_port) if options.smtp_port else None
    uvicorn.run(
        create_app(options.record, smtp),
        host=options.host,
        port=options.port,
        log_level=options.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
