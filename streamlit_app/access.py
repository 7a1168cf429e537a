"""Who may see what: console users, roles, and the site scope every console query runs under.

The scope is enforced where the data is read, not in the UI: every ClickHouse query of a site-scoped user
carries ClickHouse's ``additional_table_filters`` setting (the engine adds ``site IN (...)`` to every read
of every Vigil table, also inside views, joins and sub-queries), and an analyst's own SQL is first parsed by
ClickHouse itself (``EXPLAIN AST``) and refused unless it is one read-only SELECT over Vigil's tables, with
no SETTINGS clause that could lift the filter and no table function. Alertmanager reads and silences are
filtered and checked by the ``site`` label the same way.

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


def set_user(path: Path, name: str, role: Role, sites: Iterable[str], password: str | None = None,
             email: str | None = None) -> UserEntry:  # fmt: skip
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
    secret = path.with_name("initial-admin-password")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


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

# Vigil's tables and views an analyst may read (every one has a `site` column).
SITE_TABLES = ("window_stats", "window_stats_latest", "anomalies", "anomalies_latest", "alert_deliveries",
               "machine_state", "insights", "insights_latest")  # fmt: skip


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class QueryScope:
    """ClickHouse settings that confine a principal's reads to their sites, plus the SQL workbench limits."""

    principal: Principal
    database: str
    tables: tuple[str, ...] = SITE_TABLES
    extra: Mapping[str, Any] = field(default_factory=dict)

    def site_filter(self) -> str:
        sites = self.principal.sites
        if sites is None:
            return ""
        return f"site IN ({', '.join(_quote(s) for s in sorted(sites))})" if sites else "0"

    def settings(self) -> dict[str, Any]:
        """Per-query settings: the site filter on every Vigil table (both name forms), and any extras."""
        out: dict[str, Any] = dict(self.extra)
        condition = self.site_filter()
        if condition:
            filters = {f"{self.database}.{t}": condition for t in self.tables} | {t: condition for t in self.tables}
            body = ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in sorted(filters.items()))
            out["additional_table_filters"] = "{" + body + "}"
        return out


# -- the SQL workbench guard ---------------------------------------------------------------------------------

_AST_LINE = re.compile(r"^( *)(\S+)(?:\s+(.*))?$")
_FORBIDDEN_NODES = {"Set": "a SETTINGS clause", "SetQuery": "SET", "InsertQuery": "INSERT",
                    "AlterQuery": "ALTER", "CreateQuery": "CREATE", "DropQuery": "DROP", "SystemQuery": "SYSTEM",
                    "RenameQuery": "RENAME", "OptimizeQuery": "OPTIMIZE", "UseQuery": "USE", "DeleteQuery": "DELETE"}
MAX_SQL_CHARS = 20_000


def check_workbench_sql(ast_lines: Iterable[str], database: str, existing_tables: Iterable[str] = (),
                        allowed: Iterable[str] = SITE_TABLES) -> list[str]:  # fmt: skip
    """Problems with a workbench query, given ClickHouse's ``EXPLAIN AST`` of it (empty list = may run).

    One SELECT (UNION allowed) reading only Vigil's site-scoped tables, without a SETTINGS clause or a table
    function (file(), url(), remote() ...). An unqualified name that is no table of ``database`` (one of
    ``existing_tables``) is a WITH sub-query's name (the AST does not name those) or an error ClickHouse reports.
    """
    allowed = set(allowed)
    existing = set(existing_tables)
    lines = [line.rstrip() for line in ast_lines if line.strip()]
    if not lines or not lines[0].lstrip().startswith("SelectWithUnionQuery"):
        head = lines[0].split()[0] if lines else "nothing"
        return [f"only a SELECT query may run here (this is {head})"]
    problems: set[str] = set()
    parents: list[tuple[int, str]] = []  # (indent, node) of the enclosing nodes
    for line in lines:
        match = _AST_LINE.match(line)
        if not match:
            continue
        indent, node, rest = len(match.group(1)), match.group(2), (match.group(3) or "")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        parent = parents[-1][1] if parents else ""
        parents.append((indent, node))
        name = rest.split(" ")[0]
        if node in _FORBIDDEN_NODES:
            problems.add(f"{_FORBIDDEN_NODES[node]} is not allowed in the workbench")
        elif node == "Function" and parent == "TableExpression":
            problems.add(f"the table function {name}() is not allowed in the workbench")
        elif node == "TableIdentifier":
            db, _, table = name.rpartition(".")
            readable = table in allowed if db else (table in allowed or table not in existing)
            if db and db != database:
                readable = False
            if not readable:
                problems.add(f"table {name!r} is not readable here; the workbench reads {', '.join(sorted(allowed))}")
    return sorted(problems)


# -- OpenID Connect (Streamlit's st.login) -----------------------------------------------------------------


def render_auth_secrets(settings: Any) -> Path | None:
    """Write Streamlit's ``[auth]`` secrets for the configured OIDC provider (None when none is configured).

    The file lives in the data directory (mode 600), never in the repo; the cookie secret is generated once."""
    console = settings.console
    if not console.oidc_client_id:
        return None
    if not console.oidc_server_metadata_url:
        raise ValueError("console.oidc_client_id is set but console.oidc_server_metadata_url is not: set "
                         "VIGIL_CONSOLE__OIDC_SERVER_METADATA_URL to the provider's .well-known/openid-configuration")
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
