"""A local account's sign-in, remembered by the browser: a new tab (an alert link opened later, say) does not ask
for the password again until the token expires or the person signs out.

A Streamlit session lives in one tab, so the sign-in is carried in a cookie holding a signed, timed token
(itsdangerous, keyed by a secret in the console's data directory). The token names the user and a fingerprint of
their password hash: changing the password or removing the user voids every token; role and sites are read from
the users file at each use, so a change there applies to the next tab. Streamlit reads cookies when a tab
connects and has no call to set one, so the page sets and clears it with a small script.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from itsdangerous import BadData, URLSafeTimedSerializer

from streamlit_app.access import Principal, UsersFile

COOKIE = "vigil_signin"
SALT = "vigil-console-signin"


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:24]


def load_key(path: Path) -> bytes:
    """The signing secret, made on first use (readable by the owner only); deleting it signs everyone out."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def issue(key: bytes, users: UsersFile, name: str) -> str:
    """A token for a user who has just signed in with their password."""
    entry = users.users[name]
    if entry.password_hash is None:
        raise ValueError(f"{name} has no password: only a password sign-in is remembered")
    return URLSafeTimedSerializer(key, salt=SALT).dumps({"u": name, "p": _fingerprint(entry.password_hash)})


def redeem(key: bytes, users: UsersFile, token: str | None, max_age_s: float) -> Principal | None:
    """The principal a cookie's token stands for, or None when it is missing, forged, expired, or its user is
    gone or has a new password since."""
    if not token:
        return None
    try:
        claims = URLSafeTimedSerializer(key, salt=SALT).loads(token, max_age=max_age_s)
    except BadData:  # forged, expired, or a payload that is not ours
        return None
    if not isinstance(claims, dict):
        return None
    name = claims.get("u")
    entry = users.users.get(name) if isinstance(name, str) else None
    if entry is None or entry.password_hash is None or claims.get("p") != _fingerprint(entry.password_hash):
        return None
    return Principal.from_entry(name, entry)


def set_cookie_script(token: str, max_age_s: int, secure: bool) -> str:
    """The page script that stores the token for this site's tabs (SameSite=Strict: never sent cross-site)."""
    flags = f"path=/; max-age={max_age_s}; SameSite=Strict" + ("; Secure" if secure else "")
    return f'<script>document.cookie = "{COOKIE}={token}; {flags}";</script>'


def clear_cookie_script() -> str:
    return f'<script>document.cookie = "{COOKIE}=; path=/; max-age=0; SameSite=Strict";</script>'
