"""One way to assemble a Flink job, for its ``main()`` and for the tests alike.

A job is its registry entry (jobs/registry.py), its SQL (sql/flink/<job>/, rendered by ``sql``) and the
Python functions it registers (``prepare``). :meth:`FlinkJob.build` runs exactly that on a given
TableEnvironment: the tests hand it an environment with file sources and sinks swapped in through
template ``overrides``, :meth:`FlinkJob.main` one configured for checkpoints and Kafka. So what a test
runs is what production runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyflink.table import StatementSet, TableEnvironment

from jobs.flink_env import JobSql, create_table_env, execute, statement_set_of
from jobs.registry import JobEntry
from vigil.logs import setup_logging
from vigil.rules import RulesConfig, load_rules
from vigil.settings import Settings, get_settings

# (settings, rules or None, template overrides) -> the job's statements
SqlFn = Callable[[Settings, RulesConfig | None, Mapping[str, object]], JobSql]
PrepareFn = Callable[[TableEnvironment, Settings, RulesConfig | None], None]


def _nothing(env: TableEnvironment, settings: Settings, rules: RulesConfig | None) -> None:
    return None


@dataclass(frozen=True)
class FlinkJob:
    entry: JobEntry
    sql: SqlFn
    prepare: PrepareFn = _nothing  # register Python functions, set job-specific options
    functions: Callable[[Settings], str] = lambda settings: ""  # Python functions' part of the fingerprint
    uses_rules: bool = False  # reads flink-conf/rules.yaml (loaded once, failing fast on a bad field)

    def rules(self, settings: Settings, rules: RulesConfig | None = None) -> RulesConfig | None:
        if not self.uses_rules:
            return None
        return rules if rules is not None else load_rules(settings.scoring.rules_path)

    def statements(self, settings: Settings, rules: RulesConfig | None = None, **overrides: object) -> JobSql:
        """The job's SQL; ``overrides`` replace template values (tests swap Kafka for files this way)."""
        return self.sql(settings, self.rules(settings, rules), overrides)

    def build(
        self,
        env: TableEnvironment,
        settings: Settings,
        rules: RulesConfig | None = None,
        sql: JobSql | None = None,
        **overrides: object,
    ) -> StatementSet:
        """Register the functions, run the DDL and return the statement set of the INSERTs: one job."""
        rules = self.rules(settings, rules)
        sql = sql if sql is not None else self.sql(settings, rules, overrides)
        self.prepare(env, settings, rules)
        return statement_set_of(env, sql.ddl, sql.inserts)

    def main(self, argv: list[str] | None = None) -> None:
        """Run the job: in-process (PyFlink local mode) or, under ``flink run``, on the cluster."""
        entry = self.entry
        parser = argparse.ArgumentParser(description=entry.description)
        parser.add_argument("--no-resume", action="store_true", help="ignore retained checkpoints")
        parser.add_argument("--explain", action="store_true", help="print the optimized plan and exit")
        parser.add_argument("--print-sql", action="store_true", help="print the rendered SQL and exit")
        args, _ = parser.parse_known_args(argv)
        setup_logging()
        settings = get_settings()
        rules = self.rules(settings)
        sql = self.sql(settings, rules, {})
        if args.print_sql:
            print(sql.script())
            return
        env = create_table_env(
            settings,
            entry.pipeline_name,
            sql.statements,
            self.functions(settings),
            resume=not args.no_resume,
            rest_port=entry.rest_port(settings),
        )
        statement_set = self.build(env, settings, rules, sql=sql)  # exactly the SQL the checkpoints are keyed by
        if args.explain:
            print(statement_set.explain())
            return
        execute(env, statement_set, entry.pipeline_name)
