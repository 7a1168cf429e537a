"""Console access rules: users file, password check, roles, the site scope and the SQL workbench guard."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from streamlit_app.access import (
    AccessError,
    Principal,
    QueryScope,
    authenticate,
    check_workbench_sql,
    ensure_initial_admin,
    load_users,
    principal_for_email,
    remove_user,
    set_user,
)


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


def test_roles_and_sites() -> None:
    analyst = Principal("ana", "analyst", frozenset({"site-1"}))
    admin = Principal("root", "admin", None)
    assert analyst.sees_site("site-1") and not analyst.sees_site("site-2") and not analyst.sees_site(None)
    assert admin.sees_site("site-2")
    with pytest.raises(AccessError, match="needs the engineer role"):
        analyst.require("engineer", "acknowledge alerts")
    with pytest.raises(AccessError, match="site 'site-2'"):
        analyst.check_site("site-2", "read the statistics")


def test_scope_filters_every_vigil_table_for_a_site_user_and_nothing_for_an_admin() -> None:
    scoped = QueryScope(Principal("ana", "analyst", frozenset({"site-1", "o'brien"})), "vigil").settings()
    filters = scoped["additional_table_filters"]
    assert "'vigil.window_stats': 'site IN (\\'o\\\\\\'brien\\', \\'site-1\\')'" in filters
    assert "'anomalies_latest': " in filters and "'alert_deliveries': " in filters
    assert QueryScope(Principal("root", "admin", None), "vigil").settings() == {}
    nothing = QueryScope(Principal("new", "analyst", frozenset()), "vigil").settings()
    assert "'anomalies': '0'" in nothing["additional_table_filters"]  # no sites: no rows


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


def test_workbench_guard_accepts_a_select_over_vigil_tables() -> None:
    assert check_workbench_sql(ast(SELECT_JOIN), "vigil", ["window_stats", "anomalies"]) == []


@pytest.mark.parametrize(("tree", "problem"), [
    (TABLE_FUNCTION, "the table function file() is not allowed"),
    (SETTINGS_CLAUSE, "a SETTINGS clause is not allowed"),
    (SELECT_JOIN.replace("vigil.window_stats", "system.tables"), "table 'system.tables' is not readable"),
    (SELECT_JOIN.replace("vigil.window_stats", "other.window_stats"), "table 'other.window_stats' is not readable"),
    ("InsertQuery   (children 1)\n Identifier t", "only a SELECT query may run here (this is InsertQuery)"),
    ("ShowTables", "only a SELECT query may run here (this is ShowTables)"),
])  # fmt: skip
def test_workbench_guard_refuses(tree: str, problem: str) -> None:
    problems = check_workbench_sql(ast(tree), "vigil", ["window_stats", "anomalies", "secrets"])
    assert any(problem in p for p in problems), problems


def test_an_unqualified_name_is_a_with_alias_unless_it_is_a_table_outside_the_scope() -> None:
    with_alias = SELECT_JOIN.replace("TableIdentifier anomalies", "TableIdentifier recent")
    assert check_workbench_sql(ast(with_alias), "vigil", ["window_stats", "anomalies"]) == []
    other_table = SELECT_JOIN.replace("TableIdentifier anomalies", "TableIdentifier secrets")
    assert check_workbench_sql(ast(other_table), "vigil", ["window_stats", "anomalies", "secrets"]) != []
