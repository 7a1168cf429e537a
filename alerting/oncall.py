"""On-call routing: which recipients of each receiver get an alert, from ``flink-conf/alerting/receivers.yaml``.

Alertmanager decides *that* a channel is notified (the webhook URL names it); this file decides *who* on that
channel: each recipient has a minimum severity and optionally a list of sites. The file is validated whole
when it is loaded, and every problem is reported with its place in the file, so a typo in a phone number
fails the relay's start instead of silently never paging anyone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerting import RECEIVERS

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK = {"none": -1, "normal": -1, "info": 0, "warning": 1, "critical": 2}
# An alert without a (known) severity label is treated as a warning: it reaches whoever takes warnings.
DEFAULT_SEVERITY = "warning"
ALL_SITES = "*"

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
_NAME = re.compile(r"^[A-Za-z0-9#@][A-Za-z0-9_.@#+-]{0,63}$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class OnCallConfigError(ValueError):
    """The on-call file is missing or wrong; the message lists every problem and where it is."""


def is_e164(number: str) -> bool:
    """True for an E.164 phone number: '+', a country code not starting with 0, at most 15 digits in all."""
    return bool(_E164.match(number))


def severity_rank(severity: str | None) -> int:
    """Order of a severity label (higher is worse); missing or unknown labels count as DEFAULT_SEVERITY."""
    return SEVERITY_RANK.get((severity or "").lower(), SEVERITY_RANK[DEFAULT_SEVERITY])


class _Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    # Sites whose alerts this recipient gets; absent or "*" = every site. Alerts without a site label
    # (pipeline-wide ones) reach every recipient whose severity matches.
    sites: tuple[str, ...] | None = None
    # Stricter than the receiver's min_severity if set (it cannot be looser: the receiver's is a floor).
    min_severity: Severity | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a usable name: letters, digits and _ . @ # + - only, at most 64 characters"
            )
        return value

    @field_validator("sites", mode="before")
    @classmethod
    def _sites(cls, value: Any) -> Any:
        if value is None or value == ALL_SITES:
            return None
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("is empty: leave `sites` out (or write '*') for every site")
            if ALL_SITES in value:
                return None
        return value

    @property
    def address(self) -> str:
        """Where messages go (phone number, e-mail address, Slack channel name)."""
        return self.name

    def matches(self, site: str, rank: int, floor: int) -> bool:
        if rank < max(floor, severity_rank(self.min_severity) if self.min_severity else floor):
            return False
        return self.sites is None or not site or site in self.sites


class SlackRecipient(_Recipient):
    """A Slack channel. Its incoming webhook is settings.alerting.slack_webhook_url unless it names another;
    with a bot token (settings.alerting.slack_bot_token) the Web API posts to ``channel`` (default: the name)."""

    # Environment variable holding this channel's own incoming-webhook URL (secrets never live in this file).
    webhook_url_env: str | None = None
    # The channel for the Web API: an ID (C0123...) or a name (#vigil-alerts); the bot must be a member.
    channel: str | None = None

    @field_validator("webhook_url_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_VAR.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value


class SmsRecipient(_Recipient):
    phone: str

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: Any) -> str:
        text = str(value).strip()
        if not is_e164(text):
            hint = " (quote it in YAML, or it becomes a number without its '+')" if isinstance(value, int) else ""
            raise ValueError(
                f"{text!r} is not an E.164 phone number: '+', country code and number, digits only, at most "
                f"15 digits, e.g. +15550000001{hint}"
            )
        return text

    @property
    def address(self) -> str:
        return self.phone


class EmailRecipient(_Recipient):
    email: str

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value.strip()):
            raise ValueError(f"{value!r} is not an e-mail address (name@example.com)")
        return value.strip()

    @property
    def address(self) -> str:
        return self.email


class _Receiver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_severity: Severity = "warning"
    # Also notify when an alert ends (to the recipients who were told it started).
    send_resolved: bool = True
    recipients: tuple[_Recipient, ...] = ()

    @model_validator(mode="after")
    def _check_recipients(self) -> _Receiver:
        seen: set[str] = set()
        floor = severity_rank(self.min_severity)
        for recipient in self.recipients:
            if recipient.name in seen:
                raise ValueError(f"recipient name {recipient.name!r} is used twice: names must be unique")
            seen.add(recipient.name)
            if recipient.min_severity and severity_rank(recipient.min_severity) < floor:
                raise ValueError(
                    f"recipient {recipient.name!r} has min_severity {recipient.min_severity}, below the "
                    f"receiver's {self.min_severity}: lower the receiver's min_severity instead"
                )
        return self


class SlackReceiver(_Receiver):
    recipients: tuple[SlackRecipient, ...] = ()


class SmsReceiver(_Receiver):
    min_severity: Severity = "critical"
    recipients: tuple[SmsRecipient, ...] = ()


class EmailReceiver(_Receiver):
    recipients: tuple[EmailRecipient, ...] = ()


class _OnCallFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slack: SlackReceiver = Field(default_factory=SlackReceiver)
    sms: SmsReceiver = Field(default_factory=SmsReceiver)
    email: EmailReceiver = Field(default_factory=EmailReceiver)


@dataclass(frozen=True)
class OnCall:
    """The validated on-call configuration: route an alert's labels to the recipients of a receiver."""

    receivers: dict[str, _Receiver]
    source: str = "<memory>"

    def receiver(self, name: str) -> _Receiver:
        return self.receivers[name]

    def route(self, receiver: str, labels: dict[str, str]) -> list[_Recipient]:
        """Recipients of ``receiver`` who get an alert with these labels (severity and site)."""
        config = self.receivers.get(receiver)
        if config is None:
            return []
        rank = severity_rank(labels.get("severity"))
        floor = severity_rank(config.min_severity)
        site = labels.get("site", "")
        return [r for r in config.recipients if r.matches(site, rank, floor)]

    def recipient(self, receiver: str, name: str) -> _Recipient | None:
        config = self.receivers.get(receiver)
        return next((r for r in config.recipients if r.name == name), None) if config else None


def _where(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_oncall(data: Any, source: str = "<memory>") -> OnCall:
    """Validate the on-call mapping (the YAML's content); raises :class:`OnCallConfigError` listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict) or set(data) - {"receivers"}:
        raise OnCallConfigError(
            f"{source}: expected a mapping with one key, `receivers` (holding {', '.join(RECEIVERS)}); "
            f"got {sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    try:
        parsed = _OnCallFile.model_validate(data.get("receivers") or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling and indentation)"
            lines.append(f"  receivers.{_where(err['loc'])}: {msg}")
        raise OnCallConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None
    return OnCall(receivers={name: getattr(parsed, name) for name in RECEIVERS}, source=source)


def load_oncall(path: Path) -> OnCall:
    """Read and validate the on-call file; the error says what to fix and where."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise OnCallConfigError(
            f"on-call file {path} not found: create it (flink-conf/alerting/receivers.yaml is an example) "
            "or point VIGIL_ALERTING__RECEIVERS_PATH at yours"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise OnCallConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_oncall(data, str(path))
