"""The Alertmanager webhook (version 4) as pydantic models, and its validation into clear 422 messages.

Alertmanager sends every field; other senders (curl, tests, a hand-written script) often do not, so only
what the relay needs is required: each alert's ``status``, ``labels`` and ``startsAt``. A missing
``fingerprint`` is derived from the labels the way Alertmanager identifies an alert (the same label set is
the same alert), so idempotency still holds.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Alertmanager's "no end yet" timestamp (Go's zero time) and anything before 1971 mean "not ended".
_NOT_ENDED_BEFORE = datetime(1971, 1, 1, tzinfo=UTC)


class InvalidWebhook(ValueError):
    """The request body is not an Alertmanager webhook; the message says which field is wrong."""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Alert(BaseModel):
    """One alert of a notification, firing or resolved."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime  # noqa: N815 -- Alertmanager's field names
    endsAt: datetime | None = None  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str = ""

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)

    @model_validator(mode="after")
    def _fill_fingerprint(self) -> Alert:
        if not self.fingerprint:
            canonical = orjson.dumps(self.labels, option=orjson.OPT_SORT_KEYS)
            self.fingerprint = hashlib.sha256(canonical).hexdigest()[:16]
        return self

    @property
    def ended_at(self) -> datetime | None:
        """When the alert ended, or None while it fires (Alertmanager sends year 1 or a future time)."""
        if self.endsAt is None or self.endsAt < _NOT_ENDED_BEFORE or self.status == "firing":
            return None
        return self.endsAt

    def label(self, name: str) -> str:
        return self.labels.get(name, "")


class WebhookPayload(BaseModel):
    """A notification of one alert group, as Alertmanager posts it to a webhook receiver."""

    model_config = ConfigDict(extra="ignore")

    version: str = "4"
    groupKey: str = ""  # noqa: N815
    truncatedAlerts: int = Field(0, ge=0)  # noqa: N815
    status: Literal["firing", "resolved"] = "firing"
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str = ""  # noqa: N815
    alerts: list[Alert] = Field(min_length=1)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def parse_webhook(body: bytes) -> WebhookPayload:
    """Validate a webhook body; raises :class:`InvalidWebhook` naming every wrong field."""
    if not body.strip():
        raise InvalidWebhook("empty body: expected an Alertmanager webhook JSON object (version 4)")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidWebhook(f"body is not valid JSON ({exc}); expected an Alertmanager webhook object") from exc
    if not isinstance(data, dict):
        raise InvalidWebhook(f"expected a JSON object (Alertmanager webhook), got {type(data).__name__}")
    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_location(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise InvalidWebhook(f"not an Alertmanager webhook: {problems}") from exc
