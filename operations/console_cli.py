"""`vigil console`: start the analyst console; `vigil console users ...`: who may sign in, and to what."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from operations.stack.services import CONSOLE, Stack
from streamlit_app.access import ROLE_RANK, ensure_initial_admin, load_users, remove_user, set_user
from vigil.settings import Settings, get_settings

console = Console()
console_app = typer.Typer(help="The Streamlit analyst console and its users.", invoke_without_command=True)
users_app = typer.Typer(no_args_is_help=True, help="Console users: roles (analyst, engineer, admin) and sites.")
console_app.add_typer(users_app, name="users")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def announce_console(settings: Settings) -> None:
    """Print the console address, and the first admin's password when it was just created."""

    password = ensure_initial_admin(settings.console_users_path)
    console.print(f"console: http://{settings.console.host}:{settings.console.port}")
    if password:
        secret = settings.console_users_path.with_name("initial-admin-password")
        console.print(
            f"  first sign-in: user [bold]admin[/], password [bold]{password}[/] (also in {secret} until "
            "admin first signs in); add people with `vigil console users add`"
        )


@console_app.callback()
def console_cmd(ctx: typer.Context) -> None:
    """Start the Streamlit console (idempotent) and print its address."""
    if ctx.invoked_subcommand is not None:
        return

    settings = get_settings()
    try:
        Stack(settings).up(CONSOLE)
    except (RuntimeError, ValueError) as exc:
        _fail(str(exc))
    announce_console(settings)


@users_app.command("add")
def add_user(
    name: Annotated[str, typer.Argument(help="sign-in name")],
    role: Annotated[str, typer.Option(help="analyst (read, SQL), engineer (+ acknowledge), admin (all)")] = "analyst",
    site: Annotated[list[str] | None, typer.Option(help="a site the user sees (repeat; '*' = all)")] = None,
    email: Annotated[str | None, typer.Option(help="e-mail of the OIDC identity (when OIDC is configured)")] = None,
    password: Annotated[str | None, typer.Option(help="password (default: asked for, not echoed)")] = None,
    no_password: Annotated[bool, typer.Option(help="OIDC-only user: no local password")] = False,
) -> None:
    """Add or update a user (an existing user keeps the password unless a new one is given)."""

    settings = get_settings()
    if role not in ROLE_RANK:
        _fail(f"unknown role {role!r}: choose analyst, engineer or admin")
    sites = site or []
    if role != "admin" and not sites:
        _fail("give the user at least one --site (or --site '*' for every site)")
    exists = name in load_users(settings.console_users_path).users
    if password is None and not no_password and not exists:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        set_user(settings.console_users_path, name, role, sites or ["*"], password, email)  # type: ignore[arg-type]
    except ValueError as exc:
        _fail(str(exc))
    console.print(
        f"{'updated' if exists else 'added'} {name} ({role}, sites: {', '.join(sites) or 'all'}) in "
        f"{settings.console_users_path}"
    )


@users_app.command("list")
def list_users() -> None:
    """Users, roles and sites (never the hashes)."""

    settings = get_settings()
    table = Table("user", "role", "sites", "e-mail", "local password", title=str(settings.console_users_path))
    for name, entry in sorted(load_users(settings.console_users_path).users.items()):
        table.add_row(
            name, entry.role, ", ".join(entry.sites) or "-", entry.email or "-", "yes" if entry.password_hash else "no"
        )
    console.print(table)


@users_app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="sign-in name")]) -> None:
    """Remove a user (their open browser sessions end at the next sign-in)."""

    settings = get_settings()
    if not remove_user(settings.console_users_path, name):
        _fail(f"no user {name!r} in {settings.console_users_path}")
    console.print(f"removed {name}")
