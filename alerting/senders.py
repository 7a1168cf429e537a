"""How a message travels: Slack incoming webhook or Web API, Twilio-compatible SMS API, SMTP.

Each sender makes exactly one attempt and turns every failure into a :class:`DeliveryError` that says
whether trying again can help (see :mod:`alerting.retry`); retrying is the caller's job. A channel
that is not configured fails permanently with the setting to set, so its deliveries wait as dead letters
until ``vigil alerts resend`` after the fix.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from alerting.retry import RETRY_AFTER_STATUSES, DeliveryError, parse_retry_after, retryable_status
from vigil.settings import AlertingSettings

_BODY_IN_ERROR = 300  # characters of a provider's error body kept in the error message


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret from its setting, else from its ``*_file`` setting (stripped); None when neither is set."""
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    if file is not None:
        try:
            return file.read_text().strip() or None
        except OSError as exc:
            raise DeliveryError(f"cannot read secret file {file}: {exc}", retryable=False) from exc
    return None


def _describe(response: httpx.Response, provider: str) -> str:
    text = response.text.strip()
    try:  # Twilio-style JSON errors carry a readable message and a code
        body = orjson.loads(text)
        if isinstance(body, dict) and body.get("message"):
            code = f" (code {body['code']})" if body.get("code") else ""
            text = f"{body['message']}{code}"
    except orjson.JSONDecodeError:
        pass
    return f"{provider} answered HTTP {response.status_code}: {text[:_BODY_IN_ERROR] or response.reason_phrase}"


async def post(client: httpx.AsyncClient, provider: str, url: str, **kwargs: Any) -> httpx.Response:
    """One POST; transport failures become retryable DeliveryErrors, HTTP errors are classified by status."""
    try:
        response = await client.post(url, **kwargs)
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"{provider} timed out ({type(exc).__name__})", retryable=True) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:  # the URL itself may be a secret: not shown
        raise DeliveryError(
            f"{provider} URL is unusable ({type(exc).__name__}): check its setting", retryable=False
        ) from exc
    except httpx.TransportError as exc:
        raise DeliveryError(f"{provider} unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
    if response.is_success:
        return response
    retry_after = None
    if response.status_code in RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    raise DeliveryError(
        _describe(response, provider),
        retryable=retryable_status(response.status_code),
        status=response.status_code,
        retry_after=retry_after,
    )


class SlackSender:
    """POST Block Kit JSON to a channel's incoming webhook (Slack answers 200 ``ok``)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, webhook_url: str, payload: dict[str, Any]) -> int:
        response = await post(
            self.client,
            "Slack",
            webhook_url,
            content=orjson.dumps(payload),
            headers={"Content-Type": "application/json"},
        )
        return response.status_code


# Web API errors (HTTP 200, ``ok: false``) that go away by themselves; every other one needs a person
# (a wrong token, a channel the bot is not in, a message Slack refuses).
SLACK_API_TRANSIENT = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


@dataclass(frozen=True)
class SlackPosted:
    status: int
    channel: str  # the channel's ID, as Slack answered it (a thread is addressed by channel ID and ts)
    ts: str  # the message's timestamp: its ID, and the ``thread_ts`` of replies to it


class SlackApiSender:
    """``chat.postMessage`` with a bot token: returns the message's ``ts`` so later messages can reply to it."""

    def __init__(self, client: httpx.AsyncClient, settings: AlertingSettings) -> None:
        self.client = client
        self.settings = settings

    def token(self) -> str | None:
        return read_secret(self.settings.slack_bot_token, self.settings.slack_bot_token_file)

    async def send(
        self, channel: str, payload: dict[str, Any], thread_ts: str | None = None, broadcast: bool = False
    ) -> SlackPosted:
        token = self.token()
        if not token:
            raise DeliveryError(
                "Slack's Web API needs a bot token: set VIGIL_ALERTING__SLACK_BOT_TOKEN(_FILE)", retryable=False
            )
        body = {"channel": channel, **payload}
        if thread_ts:
            body |= {"thread_ts": thread_ts, "reply_broadcast": broadcast}
        response = await post(
            self.client,
            "Slack",
            f"{self.settings.slack_api_url.rstrip('/')}/chat.postMessage",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json; charset=utf-8", "Authorization": f"Bearer {token}"},
        )
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise DeliveryError(f"Slack answered {response.status_code} without JSON", retryable=True) from exc
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = str(answer.get("error", "unknown_error")) if isinstance(answer, dict) else "unknown_error"
            raise DeliveryError(
                f"Slack refused chat.postMessage to {channel}: {error}",
                retryable=error in SLACK_API_TRANSIENT,
                status=response.status_code,
            )
        return SlackPosted(response.status_code, str(answer.get("channel") or channel), str(answer.get("ts", "")))


class SmsSender:
    """Twilio's Messages API: form POST To/From/Body with basic auth (account SID, auth token)."""

    def __init__(self, client: httpx.AsyncClient, settings: AlertingSettings) -> None:
        self.client = client
        self.settings = settings

    def _credentials(self) -> tuple[str, str, str]:
        s = self.settings
        token = read_secret(s.sms_auth_token, s.sms_auth_token_file)
        missing = [
            name
            for name, value in (
                ("SMS_ACCOUNT_SID", s.sms_account_sid),
                ("SMS_AUTH_TOKEN", token),
                ("SMS_FROM", s.sms_from),
            )
            if not value
        ]
        if missing:
            names = ", ".join(f"VIGIL_ALERTING__{name}" for name in missing)
            raise DeliveryError(f"SMS is not configured: set {names}", retryable=False)
        return s.sms_account_sid, token, s.sms_from  # type: ignore[return-value]

    def messages_url(self, account_sid: str) -> str:
        return f"{self.settings.sms_api_base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"

    async def send(self, to: str, body: str) -> int:
        sid, token, sender = self._credentials()
        response = await post(
            self.client,
            "SMS provider",
            self.messages_url(sid),
            data={"To": to, "From": sender, "Body": body},
            auth=(sid, token),
        )
        return response.status_code


class EmailSender:
    """SMTP with optional STARTTLS and login, in a worker thread (smtplib blocks)."""

    def __init__(self, settings: AlertingSettings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> int:
        return await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> int:
        s = self.settings
        if not s.smtp_host:
            raise DeliveryError("e-mail is not configured: set VIGIL_ALERTING__SMTP_HOST", retryable=False)
        where = f"SMTP server {s.smtp_host}:{s.smtp_port}"
        if s.smtp_username and not s.smtp_starttls:
            raise DeliveryError(
                f"refusing to log in to {where} without TLS (the password would cross the network in clear): "
                "set VIGIL_ALERTING__SMTP_STARTTLS=true, or use a relay that needs no login",
                retryable=False,
            )
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.request_timeout_s) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_username:
                    smtp.login(s.smtp_username, read_secret(s.smtp_password, s.smtp_password_file) or "")
                smtp.send_message(message)
            return 250
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise DeliveryError(
                f"{where} refused the recipient: {code} {reply.decode(errors='replace')}",
                retryable=400 <= code < 500,
                status=code,
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc} (check VIGIL_ALERTING__SMTP_STARTTLS)", retryable=False) from exc
        except smtplib.SMTPResponseException as exc:  # includes authentication and sender refusals
            text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise DeliveryError(
                f"{where} answered {exc.smtp_code} {text}", retryable=400 <= exc.smtp_code < 500, status=exc.smtp_code
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:  # disconnects, refused connections, timeouts
            raise DeliveryError(f"{where} unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
