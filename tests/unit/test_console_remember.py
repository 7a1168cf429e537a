"""The remembered password sign-in: a signed, timed token naming the user and their password hash's fingerprint."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from streamlit_app import remember
from streamlit_app.access import UsersFile, load_users, set_user


@pytest.fixture
def users(tmp_path: Path) -> tuple[Path, UsersFile]:
    path = tmp_path / "users.yaml"
    set_user(path, "ana", "analyst", ["site-1"], "ana-password-1")
    set_user(path, "oidc-only", "engineer", ["site-2"])
    return path, load_users(path)


def test_a_token_stands_for_its_user_with_the_rights_in_the_users_file_now(users, tmp_path: Path) -> None:
    path, file = users
    key = remember.load_key(tmp_path / "console" / "signin.key")
    token = remember.issue(key, file, "ana")
    who = remember.redeem(key, file, token, max_age_s=3600)
    assert who is not None and (who.name, who.role, who.sites) == ("ana", "analyst", frozenset({"site-1"}))
    set_user(path, "ana", "engineer", ["site-1", "site-3"])  # same password: new rights apply to the next tab
    who = remember.redeem(key, load_users(path), token, max_age_s=3600)
    assert who is not None and who.role == "engineer" and who.sites == frozenset({"site-1", "site-3"})


def test_a_new_password_a_removed_user_a_forged_or_old_token_sign_nobody_in(users, tmp_path: Path) -> None:
    path, file = users
    key = remember.load_key(tmp_path / "signin.key")
    token = remember.issue(key, file, "ana")
    assert remember.redeem(key, file, None, 3600) is None
    assert remember.redeem(key, file, token[:-2] + ("AA" if not token.endswith("AA") else "BB"), 3600) is None
    assert remember.redeem(b"another-key", file, token, 3600) is None
    time.sleep(1.1)
    assert remember.redeem(key, file, token, max_age_s=0.5) is None, "expired"
    set_user(path, "ana", "analyst", ["site-1"], "ana-password-2")
    assert remember.redeem(key, load_users(path), token, 3600) is None, "the password changed"
    assert remember.redeem(key, UsersFile(), token, 3600) is None, "the user is gone"
    with pytest.raises(ValueError, match="no password"):
        remember.issue(key, file, "oidc-only")


def test_the_key_is_made_once_and_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "console" / "signin.key"
    key = remember.load_key(path)
    assert len(key) == 64 and remember.load_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cookie_scripts_set_and_clear_the_cookie_for_this_site_only() -> None:
    script = remember.set_cookie_script("tok.en-1", 43200, secure=True)
    assert "vigil_signin=tok.en-1" in script and "max-age=43200" in script
    assert "SameSite=Strict" in script and "Secure" in script and "path=/" in script
    assert "Secure" not in remember.set_cookie_script("t", 60, secure=False)
    assert "max-age=0" in remember.clear_cookie_script()
