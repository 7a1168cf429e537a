"""Who may do what in ClickHouse: one least-privilege identity per Vigil component, and the checks behind it.

Every component connects as its own identity (``admin`` applies the schema and runs operations; ``sink``
inserts the pipeline's rows; ``relay`` inserts the delivery log; ``agents`` reads an episode's evidence;
``console`` and ``api`` read for people). An identity's password lives in a file of its own
(``<secrets_dir>/<identity>.password``, mode 600), never on a command line, in the environment or in a URL.

The same :class:`Identity` policies are enforced twice over: the local server (``operations.stack.clickhouse``)
checks every statement against them, and :func:`render_access_sql` turns them into ClickHouse users, settings
profiles with constraints, grants, site roles and row policies for a production cluster.

Statements are checked on ClickHouse's own parse (``EXPLAIN AST``), as a tree: what kind of statement, which
tables it reads or writes (``FROM``, joins, ``IN table``), which functions it calls (every function node, in
``SELECT``, ``WHERE``, sub-queries, CTEs, lambdas), and whether it carries ``SETTINGS``, ``FORMAT`` or
``INTO OUTFILE``. Functions are an allowlist built from the engine's own catalogue by category: only
categories that compute over values (arithmetic, strings, dates, arrays, aggregates ...) are callable by a
constrained identity; whatever reaches outside Vigil's tables (``file``, ``url``, dictionaries, introspection,
settings, the host) is in none of them, and table functions are refused outright.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vigil.settings import CLICKHOUSE_IDENTITIES

IdentityName = Literal["admin", "sink", "relay", "agents", "console", "api"]
IDENTITIES: tuple[str, ...] = CLICKHOUSE_IDENTITIES

# The role that lifts the site scope (admins, and people whose users-file entry says "*"); a site's role is
# SITE_ROLE_PREFIX + site name. A scoped identity without any of them sees no row.
ALL_SITES_ROLE = "vigil_all_sites"
SITE_ROLE_PREFIX = "vigil_site_"

# Function categories (system.functions.categories) that only compute over their arguments.
SAFE_FUNCTION_CATEGORIES = frozenset(
    {
        "Aggregate Functions",
        "Arithmetic",
        "Arrays",
        "Bit",
        "Comparison",
        "Conditional",
        "Dates and Times",
        "Distance",
        "Encoding",
        "Hash",
        "IP Address",
        "JSON",
        "Logical",
        "Map",
        "Mathematical",
        "Null",
        "Random Number",
        "Rounding",
        "String",
        "String Replacement",
        "String Search",
        "String Splitting",
        "Time Window",
        "Tuple",
        "Type Conversion",
        "URL",
        "UUID",
    }
)
# Operators and handshake functions that the catalogue files under "Other" or not at all.
SAFE_EXTRA_FUNCTIONS = frozenset({"lambda", "tuple", "_CAST", "version", "timezone", "toTypeName", "currentDatabase"})
# Never callable by a constrained identity, whatever category a future engine files them under.
DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "url",
        "s3",
        "input",
        "executable",
        "remote",
        "remoteSecure",
        "cluster",
        "clusterAllReplicas",
        "dictGet",
        "joinGet",
        "getSetting",
        "getSettingOrDefault",
        "hostName",
        "fqdn",
        "FQDN",
        "getMacro",
        "filesystemAvailable",
        "filesystemCapacity",
        "filesystemUnreserved",
        "sleep",
        "sleepEachRow",
        "currentUser",
        "currentProfiles",
        "currentRoles",
        "serverUUID",
        "getServerPort",
        "uptime",
        "getClientHTTPHeader",
        "getOSKernelVersion",
        "displayName",
        "formatQuery",
        "formatQuerySingleLine",
    }
)
# System tables every identity may read: catalogues without data (as in ClickHouse, where every user reads them).
# The client library's handshake reads the settings it may send; the console's guard reads the functions.
HANDSHAKE_TABLES = frozenset(
    {"system.settings", "system.one", "system.functions", "system.aggregate_function_combinators"}
)
# URL-parameter settings a constrained identity may send: how data is encoded, and the sink's dedup token.
CHANGEABLE_SETTING_PREFIXES = ("output_format_", "input_format_", "date_time_", "insert_deduplicat")
CHANGEABLE_SETTINGS = frozenset(
    {"cast_string_to_dynamic_use_inference", "async_insert", "wait_for_async_insert", "optimize_on_insert"}
)


class AccessDenied(PermissionError):
    """A statement this identity may not run; the message says what and why."""


@dataclass(frozen=True)
class Identity:
    """One component's rights. Table names are unqualified names in Vigil's database."""

    name: IdentityName
    select: frozenset[str] = frozenset()
    insert: frozenset[str] = frozenset()
    unrestricted: bool = False  # admin: schema and operations
    site_scoped: bool = False  # reads get the server-side site filter of the roles it asks for
    # Limits of the identity's settings profile; the client cannot change them.
    limits: Mapping[str, str] = field(default_factory=dict)

    @property
    def readonly(self) -> bool:
        return not (self.unrestricted or self.insert)


PEOPLE_LIMITS = {
    "max_memory_usage": str(2 << 30),
    "max_bytes_to_read": str(20 << 30),
    "max_result_bytes": str(256 << 20),
    "max_result_rows": "1000000",
    "result_overflow_mode": "throw",
    "max_execution_time": "60",
    "max_query_size": "262144",
    "max_ast_elements": "50000",
    "max_expanded_ast_elements": "500000",
    "max_rows_in_join": "10000000",
    "max_bytes_in_join": str(1 << 30),
    "max_rows_to_group_by": "10000000",
}
COMPONENT_LIMITS = {"max_memory_usage": str(4 << 30), "max_execution_time": "300"}


@dataclass(frozen=True)
class VigilTables:
    """Vigil's table and view names as configured (every filter and grant is built from these)."""

    database: str
    window_stats: str
    window_stats_view: str
    anomalies: str
    anomalies_view: str
    machine_state: str
    insights: str
    insights_view: str
    fault_labels: str
    deliveries: str

    @property
    def site_tables(self) -> tuple[str, ...]:
        """Every table and view with a ``site`` column: each gets the site filter."""
        return (
            self.window_stats,
            self.window_stats_view,
            self.anomalies,
            self.anomalies_view,
            self.machine_state,
            self.insights,
            self.insights_view,
            self.fault_labels,
            self.deliveries,
        )


def identities(tables: VigilTables) -> dict[IdentityName, Identity]:
    """Each component's identity, its grants named from the configured tables."""
    t = tables
    readable = frozenset(t.site_tables)
    evidence = frozenset({t.window_stats, t.window_stats_view, t.anomalies, t.anomalies_view, t.machine_state})
    return {
        "admin": Identity("admin", unrestricted=True),
        "sink": Identity("sink", insert=frozenset({t.window_stats, t.anomalies, t.insights}), limits=COMPONENT_LIMITS),
        "relay": Identity("relay", insert=frozenset({t.deliveries}), limits=COMPONENT_LIMITS),
        "agents": Identity("agents", select=evidence, limits=COMPONENT_LIMITS),
        "console": Identity("console", select=readable, site_scoped=True, limits=PEOPLE_LIMITS),
        "api": Identity("api", select=readable, site_scoped=True, limits=PEOPLE_LIMITS),
    }


# -- secrets ----------------------------------------------------------------------------------------------


def password_path(secrets_dir: Path, identity: str) -> Path:
    return secrets_dir / f"{identity}.password"


def ensure_passwords(secrets_dir: Path, names: Iterable[str] = IDENTITIES) -> None:
    """Create a random password file for every identity that has none (directory 700, files 600)."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o700)
    for name in names:
        path = password_path(secrets_dir, name)
        if path.exists():
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(24) + "\n")


def read_password(secrets_dir: Path, identity: str) -> str:
    path = password_path(secrets_dir, identity)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no ClickHouse password file for identity {identity!r} at {path}: the local stack creates it on its "
            "first start (`vigil stack up`); for a real cluster, write that identity's password there (mode 600)"
        ) from None


def password_sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


# -- ClickHouse's parse, as a tree ------------------------------------------------------------------------


@dataclass
class Node:
    """One line of ``EXPLAIN AST``: the node type, what follows it on the line, and its children."""

    kind: str
    text: str
    children: list[Node] = field(default_factory=list)

    def walk(self, parent: Node | None = None) -> Iterator[tuple[Node, Node | None]]:
        yield self, parent
        for child in self.children:
            yield from child.walk(self)

    @property
    def name(self) -> str:
        """The node's name without its alias and child count: ``window_stats (alias w) (children 1)``."""
        return _SUFFIX.sub("", self.text).strip()


_AST_LINE = re.compile(r"^( *)(\S+)(?:\s+(.*))?$")
_SUFFIX = re.compile(r"(?:\s*\((?:alias [^)]*|children \d+)\))+$")


def parse_ast(lines: Iterable[str]) -> Node:
    """The tree of ClickHouse's ``EXPLAIN AST`` output (one node per line, indented by one space per level)."""
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for line in lines:
        if not line.strip():
            continue
        match = _AST_LINE.match(line.rstrip())
        if not match:
            continue
        indent = len(match.group(1))
        node = Node(match.group(2), match.group(3) or "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        elif root is None:
            root = node
        else:
            raise AccessDenied("only one statement may run at a time")
        stack.append((indent, node))
    if root is None:
        raise AccessDenied("the statement is empty")
    return root


_IN_FUNCTIONS = frozenset(
    {"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn"}
)
_STATEMENT_NAMES = {
    "SelectWithUnionQuery": "SELECT",
    "InsertQuery": "INSERT",
    "DescribeQuery": "DESCRIBE",
    "ExistsQuery": "EXISTS",
    "ExistsTableQuery": "EXISTS",
    "SetQuery": "SET",
    "CreateQuery": "CREATE",
    "DropQuery": "DROP",
    "AlterQuery": "ALTER",
    "SystemQuery": "SYSTEM",
    "UseQuery": "USE",
    "Explain": "EXPLAIN",
    "ShowTables": "SHOW",
    "ShowTablesQuery": "SHOW",
    "OptimizeQuery": "OPTIMIZE",
    "RenameQuery": "RENAME",
    "DeleteQuery": "DELETE",
    "KillQueryQuery": "KILL",
    "TruncateQuery": "TRUNCATE",
}


def statement_kind(root: Node) -> str:
    return _STATEMENT_NAMES.get(root.kind, root.kind.removesuffix("Query").upper() or root.kind)


def has_output_clause(root: Node) -> str | None:
    """``INTO OUTFILE`` or ``FORMAT`` on a SELECT: they are children of the statement beside its body."""
    if root.kind != "SelectWithUnionQuery":
        return None
    for child in root.children[1:]:
        return "INTO OUTFILE" if child.kind == "Literal" else "a FORMAT clause"
    return None


@dataclass(frozen=True)
class References:
    """What a statement touches: tables read ("db.table" or "table"), functions, table functions, SETTINGS."""

    tables: frozenset[str]
    functions: frozenset[str]
    table_functions: frozenset[str]
    settings_clause: bool
    insert_target: str | None


def references(root: Node) -> References:
    tables: set[str] = set()
    functions: set[str] = set()
    table_functions: set[str] = set()
    settings_clause = False
    target = None
    if root.kind in ("InsertQuery", "ExistsTableQuery"):
        idents = [c.name for c in root.children if c.kind == "Identifier"][:2]
        named = ".".join(idents) if idents else None
        if root.kind == "InsertQuery":
            target = named
        elif named:
            tables.add(named)
    for node, parent in root.walk():
        if node.kind in ("Set", "SetQuery"):
            settings_clause = True
        elif node.kind == "TableIdentifier":
            tables.add(node.name)
        elif node.kind == "Function":
            if parent is not None and parent.kind == "TableExpression":
                table_functions.add(node.name)
            else:
                functions.add(node.name)
                if node.name in _IN_FUNCTIONS and node.children and len(node.children[0].children) == 2:
                    right = node.children[0].children[1]
                    if right.kind == "Identifier":  # `x IN some_table`: a table read
                        tables.add(right.name)
    return References(frozenset(tables), frozenset(functions), frozenset(table_functions), settings_clause, target)


# -- the function allowlist -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionCatalogue:
    """The engine's functions that a constrained identity may call (built from ``system.functions``)."""

    allowed: frozenset[str]  # exact names
    allowed_folded: frozenset[str]  # lower-cased names of case-insensitive functions
    aggregates: frozenset[str]
    combinators: tuple[str, ...]  # longest first

    @classmethod
    def from_rows(
        cls, functions: Iterable[tuple[str, str, str, int, int]], combinators: Iterable[str]
    ) -> FunctionCatalogue:
        """``functions``: (name, categories, alias_to, is_aggregate, case_insensitive) rows of system.functions."""
        rows = list(functions)
        safe: set[str] = set(SAFE_EXTRA_FUNCTIONS)
        for name, categories, _alias, _agg, _ci in rows:
            cats = {c.strip() for c in categories.split(",") if c.strip()}
            if cats and cats <= SAFE_FUNCTION_CATEGORIES:
                safe.add(name)
        for name, categories, alias, _agg, _ci in rows:  # an alias is as safe as what it names
            if alias and alias in safe and not categories.strip():
                safe.add(name)
        safe -= DENIED_FUNCTIONS
        folded = {name.lower() for name, _c, _a, _agg, ci in rows if ci and name in safe}
        aggregates = {name for name, _c, _a, agg, _ci in rows if agg and name in safe}
        return cls(
            frozenset(safe),
            frozenset(folded),
            frozenset(aggregates),
            tuple(sorted(set(combinators), key=len, reverse=True)),
        )

    def permits(self, name: str) -> bool:
        return name in self.allowed or name.lower() in self.allowed_folded or self._aggregate(name, combined=False)

    def _aggregate(self, name: str, combined: bool = True) -> bool:
        """``avgIf``, ``sumOrNull``, ``quantilesStateIf`` ...: a safe aggregate behind combinator suffixes."""
        if combined and (name in self.aggregates or name.lower() in self.allowed_folded):
            return True
        return any(
            name.endswith(c) and len(name) > len(c) and self._aggregate(name[: -len(c)]) for c in self.combinators
        )


FUNCTIONS_QUERY = "SELECT name, categories, alias_to, is_aggregate, case_insensitive FROM system.functions"
COMBINATORS_QUERY = "SELECT name FROM system.aggregate_function_combinators"


# -- checking one statement -------------------------------------------------------------------------------


def check_statement(
    root: Node, identity: Identity, database: str, existing_tables: Iterable[str], catalogue: FunctionCatalogue | None
) -> None:
    """Refuse (:class:`AccessDenied`) what ``identity`` may not run; every identity is refused INTO OUTFILE.

    An unqualified name that is no table of ``database`` (one of ``existing_tables``) is a WITH sub-query's name:
    the parse does not name those, and the engine reports an unknown one itself.
    """
    who = f"ClickHouse identity {identity.name!r}"
    output = has_output_clause(root)
    if output == "INTO OUTFILE":
        raise AccessDenied("INTO OUTFILE is not allowed on this server: results go back to the client")
    if identity.unrestricted:
        return
    if root.kind == "Explain" and root.name == "EXPLAIN AST" and root.children:
        # Only the parse of a statement this identity may run itself (the console's workbench asks for it).
        check_statement(root.children[0], identity, database, existing_tables, catalogue)
        return
    kind = statement_kind(root)
    allowed_kinds = {"SELECT", "DESCRIBE", "EXISTS"} | ({"INSERT"} if identity.insert else set())
    if kind not in allowed_kinds:
        raise AccessDenied(f"{who} may not run {kind} statements (only {', '.join(sorted(allowed_kinds))})")
    refs = references(root)
    if refs.settings_clause:
        raise AccessDenied(f"{who} may not change settings (a SETTINGS clause or SET); its profile fixes them")
    if refs.table_functions:
        names = ", ".join(f"{n}()" for n in sorted(refs.table_functions))
        raise AccessDenied(f"{who} may not call table functions ({names}): it reads Vigil's tables only")
    existing = set(existing_tables)
    # Any grant shows a table's existence and columns (a client describes a table before it inserts into it).
    describes_table = kind == "DESCRIBE" and any(
        c.kind == "TableExpression" and [g.kind for g in c.children] == ["TableIdentifier"] for c in root.children
    )
    visible = identity.select | identity.insert if kind == "EXISTS" or describes_table else identity.select
    for table in sorted(refs.tables):
        if not _may_read(table, visible, database, existing):
            raise AccessDenied(f"{who} may not read {table!r}")
    if kind == "INSERT":
        db, _, name = (refs.insert_target or "").rpartition(".")
        if (db and db != database) or name not in identity.insert:
            raise AccessDenied(f"{who} may not insert into {refs.insert_target!r}")
    if catalogue is not None:
        refused = sorted(f for f in refs.functions if not catalogue.permits(f))
        if refused:
            raise AccessDenied(
                f"{who} may not call {', '.join(f + '()' for f in refused)}: only functions that "
                "compute over values are allowed"
            )


def _may_read(table: str, granted: frozenset[str], database: str, existing: set[str]) -> bool:
    db, _, name = table.rpartition(".")
    if table in HANDSHAKE_TABLES:
        return True
    if db:
        return db == database and name in granted
    return name in granted or name not in existing


def setting_changeable(name: str) -> bool:
    return name in CHANGEABLE_SETTINGS or name.startswith(CHANGEABLE_SETTING_PREFIXES)


def site_filter(roles: Iterable[str]) -> str | None:
    """The row filter of a site-scoped identity with these roles: None for every site, "0" for none."""
    roles = {r.strip() for r in roles if r.strip()}
    if ALL_SITES_ROLE in roles:
        return None
    sites = sorted(r[len(SITE_ROLE_PREFIX) :] for r in roles if r.startswith(SITE_ROLE_PREFIX))
    if not sites:
        return "0"
    return f"site IN ({', '.join(quote(s) for s in sites)})"


def table_filters(tables: VigilTables, condition: str) -> str:
    """``additional_table_filters`` putting ``condition`` on every site table, in both name forms."""
    names = [f"{tables.database}.{t}" for t in tables.site_tables] + list(tables.site_tables)
    return "{" + ", ".join(f"{quote(n)}: {quote(condition)}" for n in sorted(names)) + "}"


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def site_roles(sites: Iterable[str] | None) -> str:
    """The ``role`` request parameter for a principal's sites (None: every site)."""
    if sites is None:
        return ALL_SITES_ROLE
    return ",".join(SITE_ROLE_PREFIX + s for s in sorted(sites))


# -- production: the same policy as ClickHouse access control ---------------------------------------------


def _profile_setting(name: str, value: str) -> str:
    if value.isdigit() and name != "readonly":
        return f"{name} = {value} MAX {value}"
    return f"{name} = {value if value.isdigit() else quote(value)} CONST"


def render_access_sql(
    tables: VigilTables, users: Mapping[str, str], password_hashes: Mapping[str, str], sites: Iterable[str]
) -> list[str]:
    """ClickHouse statements that give a real cluster the identities the local server enforces.

    Users identified by SHA-256 of their password file, one settings profile per identity whose limits are
    constraints (readonly=1 for the reading identities, so no query can lift it), grants on exactly the tables
    above, one role per site with a row policy on every site table, and the all-sites role."""
    db = tables.database
    out: list[str] = []
    for name, ident in identities(tables).items():
        user = users[name]
        profile = f"vigil_{name}_profile"
        settings = dict(ident.limits)
        if ident.readonly:
            settings["readonly"] = "1"
        # A numeric limit may be lowered by a query (MAX), never raised; the rest is fixed (CONST).
        body = ", ".join(_profile_setting(k, v) for k, v in sorted(settings.items()))
        out.append(f"CREATE SETTINGS PROFILE OR REPLACE {profile}" + (f" SETTINGS {body}" if body else ""))
        out.append(
            f"CREATE USER OR REPLACE {user} IDENTIFIED WITH sha256_hash BY {quote(password_hashes[name])} "
            f"SETTINGS PROFILE {profile}"
        )
        if ident.unrestricted:
            out.append(f"GRANT ALL ON {db}.* TO {user}")
        for table in sorted(ident.select):
            out.append(f"GRANT SELECT ON {db}.{table} TO {user}")
        for table in sorted(ident.insert):
            out.append(f"GRANT INSERT ON {db}.{table} TO {user}")
    scoped = [users[n] for n, i in identities(tables).items() if i.site_scoped]
    out.append(f"CREATE ROLE OR REPLACE {ALL_SITES_ROLE}")
    for table in tables.site_tables:
        unscoped = ", ".join([ALL_SITES_ROLE] + [users[n] for n, i in identities(tables).items() if not i.site_scoped])
        out.append(
            f"CREATE ROW POLICY OR REPLACE vigil_all_sites ON {db}.{table} AS PERMISSIVE FOR SELECT "
            f"USING 1 TO {unscoped}"
        )
    for site in sorted(set(sites)):
        role = f"`{SITE_ROLE_PREFIX}{site}`"
        out.append(f"CREATE ROLE OR REPLACE {role}")
        for table in tables.site_tables:
            out.append(
                f"CREATE ROW POLICY OR REPLACE `vigil_site_{site}` ON {db}.{table} AS PERMISSIVE FOR SELECT "
                f"USING site = {quote(site)} TO {role}"
            )
        for user in scoped:
            out.append(f"GRANT {role} TO {user}")
    for user in scoped:
        out.append(f"GRANT {ALL_SITES_ROLE} TO {user}")
        out.append(f"SET DEFAULT ROLE NONE TO {user}")
    return out
