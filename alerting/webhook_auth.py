"""Who may post to the relay's webhook: only Alertmanager, which sends the relay's bearer token.

Without it, anyone who reaches the relay's port could page the whole on-call list with a forged alert (or
flood its outbox). The token is a file both sides read: Alertmanager through its webhook configs'
``http_config.authorization.credentials_file``, the relay at start. The local stack creates it (random,
0600, in a 0700 folder) the first time either needs it; a production install points
``settings.alerting.webhook_token_file`` at its own secret. Rotation: write a new token to the file, reload
Alertmanager, restart the relay.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_BYTES = 32


class TokenFileError(RuntimeError):
    """The token file exists but holds no usable token."""


def ensure_token(path: Path, what: str = "webhook token") -> str:
    """The token in ``path``; a new random one is written there first when the file does not exist. Also the
    stack's other generated secrets (``what`` names it in the error)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
    token = path.read_text().strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise TokenFileError(
            f"{path} holds no usable {what} (at least 16 characters, no spaces): write one, "
            "or delete the file to have a random one created"
        )
    return token


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries the token (compared in constant time)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
