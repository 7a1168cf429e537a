"""Who may see what: console users, roles, and the site scope every console query runs under.

The scope is enforced where the data is read, not in the UI: the console reads ClickHouse as its own
least-privilege identity, and every query names the principal's site roles; the server (a row policy in
production) adds ``site IN (...)`` to every read of every Vigil table, also inside views, joins and
sub-queries, whatever the query says. An analyst's own SQL is first parsed by ClickHouse itself
(``EXPLAIN AST``) and refused unless it passes an allowlist of shape, tables and functions; the server checks
the same again. Alertmanager reads and silences are filtered and checked by the ``site`` label the same way.

Local users live in a YAML file (``settings.console.users_path``) with Argon2 password hashes; with an
OpenID Connect provider configured, the provider proves who someone is and this file still says what they
may do (by e-mail).
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.clickhouse_access import (
    AccessDenied,
    FunctionCatalogue,
    VigilTables,
    has_output_clause,
    parse_ast,
    references,
    site_roles,
    statement_kind,
)

Role = Literal["analyst", "engineer", "admin"]
ROLE_RANK: dict[str, int] = {"analyst": 0, "engineer": 1, "admin": 2}
ALL_SITES = "*"
_HASHER = PasswordHasher()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AccessError(PermissionError):
    """The user may not do or see this; the message says what and why."""


class UserEntry(BaseModel):
    """One console user as stored in the users file."""

    model_config = ConfigDict(extra="forbid")

    role: Role = "analyst"
    # Sites whose machines this user sees; ["*"] for every site (admins always see every site).
    sites: list[str] = Field(default_factory=list)
    password_hash: str | None = None  # Argon2; absent for users who only sign in through OIDC
    email: str | None = None  # matched against the OIDC identity
    display_name: str | None = None

    @field_validator("sites")
    @classmethod
    def _sites(cls, sites: list[str]) -> list[str]:
        for site in sites:
            if not site or "'" in site or "\\" in site:
                raise ValueError(f"invalid site name {site!r}")
        return sites


class UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: dict[str, UserEntry] = Field(default_factory=dict)

    @field_validator("users")
    @classmethod
    def _names(cls, users: dict[str, UserEntry]) -> dict[str, UserEntry]:
        for name in users:
            if not _NAME.match(name):
                raise ValueError(f"invalid user name {name!r}: letters, digits and . _ @ - (at most 64)")
        return users


@dataclass(frozen=True)
class Principal:
    """A signed-in user: who, which role, which sites (None = every site)."""

    name: str
    role: Role
    sites: frozenset[str] | None
    display_name: str = ""

    @classmethod
    def from_entry(cls, name: str, entry: UserEntry) -> Principal:
        every = entry.role == "admin" or ALL_SITES in entry.sites
        return cls(name, entry.role, None if every else frozenset(entry.sites), entry.display_name or name)

    def can(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def require(self, role: Role, action: str) -> None:
        if not self.can(role):
            raise AccessError(f"{self.name} ({self.role}) may not {action}: that needs the {role} role")

    def sees_site(self, site: str | None) -> bool:
        return self.sites is None or (site is not None and site in self.sites)

    def check_site(self, site: str | None, action: str) -> None:
        if not self.sees_site(site):
            raise AccessError(f"{self.name} may not {action} of site {site!r}: not among their sites")

    @property
    def sites_label(self) -> str:
        return "all sites" if self.sites is None else ", ".join(sorted(self.sites)) or "no sites"


# -- the users file ------------------------------------------------------------------------------------------


def load_users(path: Path) -> UsersFile:
    """Read and validate the users file; a missing file is no users (the console then says how to add one)."""
    if not path.exists():
        return UsersFile()
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return UsersFile.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"console users file {path} is invalid: {exc}") from exc


def save_users(path: Path, users: UsersFile) -> None:
    """Write atomically, readable by the owner only (it holds password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = yaml.safe_dump(users.model_dump(exclude_none=True), sort_keys=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# Vigil console users (vigil console users --help). Passwords are Argon2 hashes.\n" + body)
    os.replace(tmp, path)


def set_user(
    path: Path, name: str, role: Role, sites: Iterable[str], password: str | None = None, email: str | None = None
) -> UserEntry:
    """Add or update a user; ``password`` None keeps the current hash."""
    users = load_users(path)
    current = users.users.get(name)
    if password is not None and len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    entry = UserEntry(
        role=role,
        sites=sorted(set(sites)),
        password_hash=_HASHER.hash(password) if password is not None else (current.password_hash if current else None),
        email=email if email is not None else (current.email if current else None),
        display_name=current.display_name if current else None,
    )
    users = UsersFile(users={**users.users, name: entry})  # validates the name
    save_users(path, users)
    return entry


def remove_user(path: Path, name: str) -> bool:
    users = load_users(path)
    if name not in users.users:
        return False
    save_users(path, UsersFile(users={k: v for k, v in users.users.items() if k != name}))
    return True


def ensure_initial_admin(path: Path) -> str | None:
    """With no users at all, create ``admin`` with a random password; returns it (once) or None."""
    if load_users(path).users:
        return None
    password = secrets.token_urlsafe(12)
    set_user(path, "admin", "admin", [ALL_SITES], password)
    secret = initial_password_path(path)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def initial_password_path(users_path: Path) -> Path:
    return users_path.with_name("initial-admin-password")


def forget_initial_password(users_path: Path, signed_in: str) -> bool:
    """After the first admin's first sign-in its generated password is known to them: the file goes (it would
    otherwise lie on disk for ever). Returns whether it was removed."""
    path = initial_password_path(users_path)
    if signed_in != "admin" or not path.exists():
        return False
    path.unlink(missing_ok=True)
    return True


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so a wrong name costs as long as a wrong password
    (made on first need: hashing costs ~0.3 s, which every process importing this module paid before)."""
    return _HASHER.hash(secrets.token_hex(16))


def authenticate(users: UsersFile, name: str, password: str) -> Principal | None:
    """The principal if ``password`` is the user's; None otherwise (same work whether or not the user exists)."""
    entry = users.users.get(name.strip())
    stored = entry.password_hash if entry and entry.password_hash else _dummy_hash()
    try:
        _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if entry is None or entry.password_hash is None:
        return None
    return Principal.from_entry(name.strip(), entry)


def principal_for_email(users: UsersFile, email: str | None) -> Principal | None:
    """An OIDC-signed-in person's rights: the user whose ``email`` matches (case-insensitive), else none."""
    if not email:
        return None
    for name, entry in users.users.items():
        if entry.email and entry.email.lower() == email.lower():
            return Principal.from_entry(name, entry)
    return None


# -- ClickHouse scope ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryScope:
    """What a principal's console queries carry: the site roles the server filters their reads by.

    The console connects as its own ClickHouse identity, whose settings profile (limits, no settings changes)
    and site filter the server applies; a query cannot name other roles than these, and the server ignores any
    filter a client sends."""

    principal: Principal
    tables: VigilTables
    extra: Mapping[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        return {**self.extra, "role": site_roles(self.principal.sites)}


# -- the SQL workbench guard ---------------------------------------------------------------------------------

MAX_SQL_CHARS = 20_000
_CTE_NAME = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s+AS\s*\(", re.IGNORECASE)


def check_workbench_sql(
    ast_lines: Iterable[str], sql: str, tables: VigilTables, catalogue: FunctionCatalogue | None
) -> list[str]:
    """Problems with a workbench query, given ClickHouse's ``EXPLAIN AST`` of it (empty list = may run).

    An allowlist: of shape (one SELECT, UNION allowed, without SETTINGS, FORMAT or INTO OUTFILE), of tables
    (Vigil's site-scoped ones; an unqualified other name only as a WITH sub-query's name), and of functions
    (every function node of the parse, wherever it stands, must be one that only computes over values; no table
    functions). The server checks the same again for the console's identity."""
    try:
        root = parse_ast(ast_lines)
    except AccessDenied as exc:
        return [str(exc)]
    if root.kind != "SelectWithUnionQuery":
        return [f"only a SELECT query may run here (this is {statement_kind(root)})"]
    problems: set[str] = set()
    clause = has_output_clause(root)
    if clause:
        problems.add(f"{clause} is not allowed in the workbench")
    refs = references(root)
    if refs.settings_clause:
        problems.add("a SETTINGS clause is not allowed in the workbench")
    problems |= {f"the table function {name}() is not allowed in the workbench" for name in refs.table_functions}
    allowed = set(tables.site_tables)
    ctes = {m.group(1) for m in _CTE_NAME.finditer(sql)}
    for name in refs.tables:
        db, _, table = name.rpartition(".")
        readable = db == tables.database and table in allowed if db else (table in allowed or table in ctes)
        if not readable:
            problems.add(f"table {name!r} is not readable here; the workbench reads {', '.join(sorted(allowed))}")
    if catalogue is not None:
        problems |= {
            f"the function {f}() is not allowed in the workbench" for f in refs.functions if not catalogue.permits(f)
        }
    return sorted(problems)


# -- OpenID Connect (Streamlit's st.login) -----------------------------------------------------------------


def render_auth_secrets(settings: Any) -> Path | None:
    """Write Streamlit's ``[auth]`` secrets for the configured OIDC provider (None when none is configured).

    The file lives in the data directory (mode 600), never in the repo; the cookie secret is generated once."""
    console = settings.console
    if not console.oidc_client_id:
        return None
    if not console.oidc_server_metadata_url:
        raise ValueError(
            "console.oidc_client_id is set but console.oidc_server_metadata_url is not: set "
            "VIGIL_CONSOLE__OIDC_SERVER_METADATA_URL to the provider's .well-known/openid-configuration"
        )
    secret = console.oidc_client_secret.get_secret_value() if console.oidc_client_secret else None
    if secret is None and console.oidc_client_secret_file:
        secret = Path(console.oidc_client_secret_file).read_text().strip()
    if not secret:
        raise ValueError("OIDC needs a client secret: VIGIL_CONSOLE__OIDC_CLIENT_SECRET or ..._SECRET_FILE")
    directory = settings.data_dir / "console"
    directory.mkdir(parents=True, exist_ok=True)
    cookie_path = directory / "cookie-secret"
    if not cookie_path.exists():
        fd = os.open(cookie_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    auth = {
        "redirect_uri": f"http://{console.host}:{console.port}/oauth2callback",
        "cookie_secret": cookie_path.read_text().strip(),
        "client_id": console.oidc_client_id,
        "client_secret": secret,
        "server_metadata_url": console.oidc_server_metadata_url,
    }
    path = directory / "secrets.toml"
    body = "[auth]\n" + "".join(f"{key} = {_toml_string(value)}\n" for key, value in auth.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    return path


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
