"""Console access rules: users file, password check, roles, the site scope and the SQL workbench guard."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from connectors.clickhouse import vigil_tables
from streamlit_app.access import (
    AccessError,
    Principal,
    QueryScope,
    authenticate,
    check_workbench_sql,
    ensure_initial_admin,
    forget_initial_password,
    load_users,
    principal_for_email,
    remove_user,
    set_user,
)
from vigil.settings import ClickHouseSettings


def test_users_file_round_trip_keeps_only_an_argon2_hash(tmp_path: Path) -> None:
    path = tmp_path / "console" / "users.yaml"
    set_user(path, "ana", "analyst", ["site-1"], "correct horse", email="Ana@Plant.example")
    text = path.read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = load_users(path)
    who = authenticate(users, "ana", "correct horse")
    assert who == Principal("ana", "analyst", frozenset({"site-1"}), "ana")
    assert authenticate(users, "ana", "wrong horse") is None
    assert authenticate(users, "nobody", "correct horse") is None
    assert principal_for_email(users, "ana@plant.example") == who  # OIDC identity -> the same rights
    assert principal_for_email(users, "eve@plant.example") is None
    set_user(path, "ana", "engineer", ["site-1", "site-2"])  # no password given: the old one stays
    assert authenticate(load_users(path), "ana", "correct horse").role == "engineer"  # type: ignore[union-attr]
    assert remove_user(path, "ana") and not remove_user(path, "ana")


def test_a_bad_users_file_or_password_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  bob:\n    role: superuser\n")
    with pytest.raises(ValueError, match=r"(?s)users file .* is invalid.*users.bob.role"):
        load_users(path)
    with pytest.raises(ValueError, match="at least 8 characters"):
        set_user(tmp_path / "u.yaml", "bob", "analyst", ["site-1"], "short")
    with pytest.raises(ValueError, match="invalid user name"):
        set_user(tmp_path / "u.yaml", "bob smith", "analyst", ["site-1"], "long enough")


def test_the_first_admin_is_created_once_with_a_random_password(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    password = ensure_initial_admin(path)
    assert password and len(password) >= 12
    assert authenticate(load_users(path), "admin", password).sites is None  # type: ignore[union-attr]
    assert (tmp_path / "initial-admin-password").read_text().strip() == password
    assert ensure_initial_admin(path) is None
    assert not forget_initial_password(path, "ana")  # someone else signing in leaves it
    assert forget_initial_password(path, "admin") and not (tmp_path / "initial-admin-password").exists()


def test_roles_and_sites() -> None:
    analyst = Principal("ana", "analyst", frozenset({"site-1"}))
    admin = Principal("root", "admin", None)
    assert analyst.sees_site("site-1") and not analyst.sees_site("site-2") and not analyst.sees_site(None)
    assert admin.sees_site("site-2")
    with pytest.raises(AccessError, match="needs the engineer role"):
        analyst.require("engineer", "acknowledge alerts")
    with pytest.raises(AccessError, match="site 'site-2'"):
        analyst.check_site("site-2", "read the statistics")


def test_scope_names_the_principals_site_roles_and_no_filter_of_its_own() -> None:
    tables = vigil_tables(ClickHouseSettings())
    scoped = QueryScope(Principal("ana", "analyst", frozenset({"site-1", "site-2"})), tables).settings()
    assert scoped == {"role": "vigil_site_site-1,vigil_site_site-2"}  # the server turns roles into the filter
    assert QueryScope(Principal("root", "admin", None), tables).settings() == {"role": "vigil_all_sites"}
    assert QueryScope(Principal("new", "analyst", frozenset()), tables).settings() == {"role": ""}


def ast(text: str) -> list[str]:
    return text.strip("\n").splitlines()


SELECT_JOIN = """
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 2)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier vigil.window_stats (alias w)
    TablesInSelectQueryElement (children 2)
     TableExpression (children 1)
      TableIdentifier anomalies
"""
TABLE_FUNCTION = """
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function file (children 1)
       ExpressionList (children 2)
        Literal '/etc/passwd'
"""
SETTINGS_CLAUSE = """
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Literal UInt64_1
   Set
"""


TABLES = vigil_tables(ClickHouseSettings())


def test_workbench_guard_accepts_a_select_over_vigil_tables() -> None:
    assert check_workbench_sql(ast(SELECT_JOIN), "SELECT ...", TABLES, None) == []


@pytest.mark.parametrize(
    ("tree", "problem"),
    [
        (TABLE_FUNCTION, "the table function file() is not allowed"),
        (SETTINGS_CLAUSE, "a SETTINGS clause is not allowed"),
        (SELECT_JOIN.replace("vigil.window_stats", "system.tables"), "table 'system.tables' is not readable"),
        (SELECT_JOIN.replace("vigil.window_stats", "other.window_stats"), "table 'other.window_stats' is not readable"),
        (
            SELECT_JOIN.replace("TableIdentifier anomalies", "TableIdentifier machine_state_mv"),
            "table 'machine_state_mv' is not readable",
        ),
        (SELECT_JOIN + " Identifier JSON", "a FORMAT clause is not allowed"),
        (SELECT_JOIN + " Literal 'x.txt'", "INTO OUTFILE is not allowed"),
        ("InsertQuery   (children 1)\n Identifier t", "only a SELECT query may run here (this is INSERT)"),
        ("ShowTables", "only a SELECT query may run here (this is SHOW)"),
    ],
)
def test_workbench_guard_refuses(tree: str, problem: str) -> None:
    problems = check_workbench_sql(ast(tree), "SELECT ...", TABLES, None)
    assert any(problem in p for p in problems), problems


def test_an_unqualified_name_outside_the_scope_is_read_only_as_a_with_name() -> None:
    with_alias = SELECT_JOIN.replace("TableIdentifier anomalies", "TableIdentifier recent")
    assert check_workbench_sql(ast(with_alias), "WITH recent AS (SELECT 1) SELECT ...", TABLES, None) == []
    assert check_workbench_sql(ast(with_alias), "SELECT * FROM recent", TABLES, None) != []
