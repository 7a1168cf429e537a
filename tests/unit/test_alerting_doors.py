"""The alerting plane's own doors: the relay's webhook token (created once, random, owner-only, reused, refused
when unusable, checked exactly) and SMTP logins only over TLS."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import pytest

from alerting.retry import DeliveryError
from alerting.senders import EmailSender
from alerting.webhook_auth import TokenFileError, authorized, ensure_token
from vigil.settings import AlertingSettings


def test_token_is_created_once_owner_only_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "alerting" / "webhook.token"
    token = ensure_token(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0
    assert ensure_token(path) == token  # the second reader gets the same secret
    assert ensure_token(tmp_path / "other.token") != token  # random, not derived


def test_an_unusable_token_file_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "webhook.token"
    for content in ("", "short", "has a space in the middle of it"):
        path.write_text(content)
        with pytest.raises(TokenFileError, match="delete the file"):
            ensure_token(path)


def test_only_the_exact_bearer_token_is_authorized() -> None:
    token = "s3cret-token-of-enough-length"
    assert authorized(f"Bearer {token}", token)
    assert authorized(f"bearer {token}", token)  # the scheme is case-insensitive (RFC 7235)
    for header in (None, "", token, f"Basic {token}", f"Bearer {token}x", f"Bearer {token[:-1]}", "Bearer "):
        assert not authorized(header, token), header


def test_smtp_never_logs_in_without_tls() -> None:
    """A password is not sent in clear: the sender refuses before it connects, and says which setting fixes it."""
    settings = AlertingSettings(smtp_host="127.0.0.1", smtp_port=1, smtp_username="vigil", smtp_password="pw")
    message = EmailMessage()
    with pytest.raises(DeliveryError, match="without TLS.*SMTP_STARTTLS") as caught:
        asyncio.run(EmailSender(settings).send(message))
    assert not caught.value.retryable
