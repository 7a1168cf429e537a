"""The identities' policies: parse trees, function allowlist, site roles and the production SQL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from connectors.clickhouse import vigil_tables
from connectors.clickhouse_access import (
    AccessDenied,
    FunctionCatalogue,
    check_statement,
    ensure_passwords,
    identities,
    parse_ast,
    references,
    render_access_sql,
    site_filter,
    site_roles,
    table_filters,
)
from vigil.settings import ClickHouseSettings

TABLES = vigil_tables(ClickHouseSettings(anomalies_table="verdicts", fault_labels_table="labels"))
CATALOGUE = FunctionCatalogue.from_rows(
    [
        ("count", "Aggregate Functions", "", 1, 1),
        ("avg", "Aggregate Functions", "", 1, 0),
        ("plus", "Arithmetic", "", 0, 0),
        ("file", "Other", "", 0, 0),
        ("median", "", "quantile", 1, 0),
        ("quantile", "Aggregate Functions", "", 1, 0),
        ("getSetting", "Other", "", 0, 0),
        ("dictGet", "Dictionary", "", 0, 0),
        ("hostName", "Other", "", 0, 0),
        ("url", "URL", "", 0, 0),
    ],  # a future catalogue filing a function somewhere safe: the deny list holds
    ["If", "OrNull", "State"],
)


def test_the_allowlist_takes_safe_categories_aliases_combinators_and_case_folding_only() -> None:
    assert CATALOGUE.permits("count") and CATALOGUE.permits("COUNT") and not CATALOGUE.permits("AVG")
    assert CATALOGUE.permits("median") and CATALOGUE.permits("avgIf") and CATALOGUE.permits("quantileStateIf")
    assert CATALOGUE.permits("lambda") and CATALOGUE.permits("tuple")
    for name in ("file", "getSetting", "dictGet", "hostName", "url", "plusIf", "fileIf", "unknown"):
        assert not CATALOGUE.permits(name), name


def test_filters_and_grants_follow_the_configured_table_names() -> None:
    assert "verdicts" in TABLES.site_tables and "labels" in TABLES.site_tables and "anomalies" not in TABLES.site_tables
    filters = table_filters(TABLES, "site IN ('site-1')")
    assert "'vigil.labels': 'site IN (\\'site-1\\')'" in filters and "'verdicts': " in filters
    ids = identities(TABLES)
    assert ids["sink"].insert == {"window_stats", "verdicts", "insights"} and not ids["sink"].select
    assert "labels" in ids["console"].select and not ids["console"].insert and ids["console"].readonly


def test_site_roles_become_the_server_side_filter() -> None:
    assert site_roles(None) == "vigil_all_sites" and site_filter(["vigil_all_sites"]) is None
    assert site_filter(site_roles({"site-2", "o'brien"}).split(",")) == "site IN ('o\\'brien', 'site-2')"
    assert site_filter([]) == "0" and site_filter(["something_else"]) == "0"


def _tree(text: str):
    return parse_ast(text.strip("\n").splitlines())


def test_in_a_table_counts_as_reading_it_and_two_roots_are_refused() -> None:
    tree = _tree("""
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Function in (children 1)
     ExpressionList (children 2)
      Literal UInt64_1
      Identifier system.one
""")
    assert references(tree).tables == {"system.one"}
    with pytest.raises(AccessDenied, match="one statement"):
        parse_ast(["SelectWithUnionQuery (children 1)", "SelectWithUnionQuery (children 1)"])


def test_insert_targets_are_checked_against_the_grant() -> None:
    insert = _tree("InsertQuery   (children 2)\n Identifier vigil\n Identifier labels")
    with pytest.raises(AccessDenied, match="may not insert into 'vigil.labels'"):
        check_statement(insert, identities(TABLES)["sink"], "vigil", [], CATALOGUE)
    with pytest.raises(AccessDenied, match="may not run INSERT"):
        check_statement(insert, identities(TABLES)["console"], "vigil", [], CATALOGUE)
    ok = _tree("InsertQuery   (children 2)\n Identifier vigil\n Identifier verdicts")
    check_statement(ok, identities(TABLES)["sink"], "vigil", [], CATALOGUE)


def test_passwords_are_random_files_readable_by_the_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    ensure_passwords(folder)
    first = {p.name: p.read_text() for p in folder.iterdir()}
    ensure_passwords(folder)  # idempotent: never rewrites a password
    assert {p.name: p.read_text() for p in folder.iterdir()} == first and len(set(first.values())) == 6
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())


def test_production_sql_has_users_profiles_grants_roles_and_row_policies() -> None:
    users = ClickHouseSettings().users
    sql = render_access_sql(TABLES, users, {name: "ab" * 32 for name in users}, ["site-1", "site-2"])
    text = "\n".join(sql)
    assert "CREATE USER OR REPLACE vigil_console IDENTIFIED WITH sha256_hash BY" in text
    assert "readonly = 1 CONST" in text and "max_execution_time = 60 MAX 60" in text
    assert "GRANT SELECT ON vigil.labels TO vigil_console" in sql
    assert "GRANT INSERT ON vigil.verdicts TO vigil_sink" in sql
    assert not [s for s in sql if s.startswith("GRANT SELECT") and "vigil_sink" in s]
    assert (
        "CREATE ROW POLICY OR REPLACE `vigil_site_site-2` ON vigil.labels AS PERMISSIVE FOR SELECT USING "
        "site = 'site-2' TO `vigil_site_site-2`" in sql
    )
    assert "SET DEFAULT ROLE NONE TO vigil_console" in sql


def test_a_writer_may_describe_its_table_but_not_read_it_through_describe() -> None:
    sink = identities(TABLES)["sink"]
    check_statement(
        _tree("DescribeQuery (children 1)\n TableExpression (children 1)\n  TableIdentifier verdicts"),
        sink,
        "vigil",
        ["verdicts"],
        CATALOGUE,
    )
    subquery = """
DescribeQuery (children 1)
 TableExpression (children 1)
  Subquery (children 1)
   SelectWithUnionQuery (children 1)
    ExpressionList (children 1)
     SelectQuery (children 2)
      ExpressionList (children 1)
       Asterisk
      TablesInSelectQuery (children 1)
       TablesInSelectQueryElement (children 1)
        TableExpression (children 1)
         TableIdentifier verdicts
"""
    with pytest.raises(AccessDenied, match="may not read 'verdicts'"):
        check_statement(_tree(subquery), sink, "vigil", ["verdicts"], CATALOGUE)
