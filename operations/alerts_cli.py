"""`vigil alerts ...`: the notification relay's dead letters, resends and delivery log.

Works on the relay's SQLite state (settings.alerting_state_path) directly, so it needs no running relay;
a running relay picks resent messages up within a second.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alerting.relay import deliver_now
from alerting.store import DELIVERED, Store
from connectors.clickhouse import ClickHouseUnavailable, make_client
from vigil.settings import Settings, get_settings

alerts_app = typer.Typer(no_args_is_help=True, help="Notification relay: dead letters, resends, delivery log.")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _store(settings: Settings) -> Store:
    path = settings.alerting_state_path
    if not path.exists():
        _fail(f"no relay state at {path}: the relay has not run with these settings (VIGIL_ALERTING__STATE_PATH)")
    return Store(path)


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def _alert(alertname: str, equipment_id: str, site: str, status: str) -> str:
    where = equipment_id or site
    return f"{alertname or '?'}{' on ' + where if where else ''} ({status})"


@alerts_app.command("dead-letters")
def dead_letters(
    limit: Annotated[int, typer.Option(help="how many to show, newest first")] = 50,
    receiver: Annotated[str | None, typer.Option(help="only this receiver: slack, sms or email")] = None,
) -> None:
    """Messages the relay gave up on, with why (resend them with `vigil alerts resend ID...`)."""
    store = _store(get_settings())
    try:
        rows = store.dead_letters(limit, receiver)
    finally:
        store.close()
    if not rows:
        console.print("[green]no dead letters[/]")
        return
    table = Table(title=f"Notification dead letters ({len(rows)} shown)")
    for column in ("id", "receiver", "recipient", "alert", "reason", "attempts", "last error", "since"):
        table.add_column(column, overflow="fold")
    for row in rows:
        reason = row.reason or ("[yellow]in-process resend interrupted[/]" if row.state != "dead" else "-")
        table.add_row(
            str(row.id),
            row.receiver,
            row.recipient,
            _alert(row.alertname, row.equipment_id, row.site, row.alert_status),
            reason,
            str(row.attempts),
            row.last_error or "-",
            _when(row.updated_at),
        )
    console.print(table)


@alerts_app.command("resend")
def resend(
    ids: Annotated[list[int] | None, typer.Argument(help="dead-letter ids (see `vigil alerts dead-letters`)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="resend every dead letter")] = False,
    now: Annotated[bool, typer.Option(help="deliver in this process now instead of leaving it to the relay")] = False,
) -> None:
    """Move dead letters back to the outbox with a fresh attempt budget (the running relay delivers them)."""
    if bool(ids) == all_:
        _fail("give dead-letter ids or --all (one of the two)")
    settings = get_settings()
    if now:
        if not settings.alerting_state_path.exists():
            _fail(f"no relay state at {settings.alerting_state_path}")
        logging.getLogger("alerting").setLevel(logging.CRITICAL)  # the outcome is printed below
        rows = asyncio.run(deliver_now(settings, None if all_ else ids))
        if not rows:
            _fail("nothing to resend: no dead letter with those ids")
        for row in rows:
            ok = row.state == DELIVERED
            colour = "green" if ok else "red"
            detail = "" if ok else f": {row.reason}"
            console.print(f"#{row.id} {row.receiver} -> {row.recipient}: [{colour}]{row.state}[/]{detail}")
        if not all(row.state == DELIVERED for row in rows):
            raise typer.Exit(1)
        return
    store = _store(settings)
    try:
        moved = store.resend(None if all_ else ids)
    finally:
        store.close()
    if not moved:
        _fail("nothing to resend: no dead letter with those ids")
    missing = sorted(set(ids or []) - set(moved))
    console.print(
        f"[green]{len(moved)} message(s) back in the outbox[/] ({', '.join(map(str, moved))}); "
        "the running relay delivers them within a second"
    )
    if missing:
        console.print(f"[yellow]not dead letters (skipped): {', '.join(map(str, missing))}[/]")


@alerts_app.command("deliveries")
def deliveries(
    limit: Annotated[int, typer.Option(help="how many attempts to show, newest first")] = 30,
    receiver: Annotated[str | None, typer.Option(help="only this receiver: slack, sms or email")] = None,
    source: Annotated[
        str, typer.Option(help="sqlite (the relay's own log) or clickhouse (the delivery table)")
    ] = "sqlite",
) -> None:
    """Recent delivery attempts: what was sent to whom, with which outcome and how fast."""
    settings = get_settings()
    if source == "sqlite":
        store = _store(settings)
        try:
            records = store.recent_attempts(limit, receiver)
        finally:
            store.close()
        rows = [
            (
                _when(r.at),
                r.receiver,
                r.recipient,
                _alert(r.alertname, r.equipment_id, r.site, r.alert_status),
                r.outcome,
                r.attempt,
                r.status,
                r.error,
                r.latency_ms,
            )
            for r in records
        ]
    elif source == "clickhouse":
        rows = _clickhouse_deliveries(settings, limit, receiver)
    else:
        _fail(f"--source must be sqlite or clickhouse, not {source!r}")
    table = Table(title=f"Notification delivery attempts ({source}, newest first)")
    for column in ("time (UTC)", "receiver", "recipient", "alert", "outcome", "attempt", "status", "error", "ms"):
        table.add_column(column, overflow="fold")
    styles = {"delivered": "green", "retry": "yellow", "dead_letter": "red"}
    for when, recv, recipient, alert, outcome, attempt, status, error, latency in rows:
        style = styles.get(outcome, "")
        table.add_row(
            when,
            recv,
            recipient,
            alert,
            f"[{style}]{outcome}[/]" if style else outcome,
            str(attempt),
            str(status or "-"),
            error or "",
            f"{latency:.0f}",
        )
    console.print(table)


def _clickhouse_deliveries(settings: Settings, limit: int, receiver: str | None) -> list[tuple]:

    try:
        client = make_client(settings.clickhouse, "admin")
    except ClickHouseUnavailable as exc:
        _fail(str(exc))
    table = f"{settings.clickhouse.database}.{settings.clickhouse.deliveries_table}"
    where = "WHERE receiver = {receiver:String}" if receiver else ""
    try:
        result = client.query(
            f"""SELECT formatDateTime(time, '%Y-%m-%d %H:%i:%S'), receiver, recipient, alertname, equipment_id,
                       site, alert_status, status, attempt, http_status, error, latency_ms
                FROM {table} {where} ORDER BY time DESC LIMIT {{limit:UInt32}}""",
            parameters={"receiver": receiver or "", "limit": limit},
        )
    finally:
        client.close()
    return [(row[0], row[1], row[2], _alert(*row[3:7]), *row[7:]) for row in result.result_rows]
