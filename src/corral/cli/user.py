"""``corral user``: dashboard users who sign in with a password (add, list, remove).

Users live in the store (scrypt-hashed), so these commands open it directly: run them where
the store is. API tokens sign in to the dashboard too; users are for people.
"""

from __future__ import annotations

import json
import os
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.cli.common import AsJson, configure, local_audit, print_table, run
from corral.dashboard.users import User, add_user, list_users, remove_user
from corral.errors import UsageError
from corral.tokens import Role

__all__ = ["register"]

out = Console(emoji=False, highlight=False)
app = typer.Typer(help="Dashboard users (password sign-in).", no_args_is_help=True)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="The user's sign-in name.")],
    role: Annotated[
        str, typer.Option(help="read, operate, execute or admin (each allows the ones before).")
    ],
) -> None:
    """Add user NAME with ROLE; the password is asked for twice (or read from
    CORRAL_USER_PASSWORD, for scripts)."""
    config, _ = configure()
    if role not in {r.value for r in Role}:
        raise typer.BadParameter(f"unknown role {role!r}: use read, operate, execute or admin")
    password = os.environ.get("CORRAL_USER_PASSWORD") or typer.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )

    async def main() -> User:
        from corral.store import open_store

        async with await open_store(config.store_url) as store:
            return await add_user(store, name, role, password, local_audit("user_add", name))

    user = run(main())
    out.print(f"user {user.name} ({user.role}) added; sign in at the dashboard's /ui")


@app.command(name="list")
def list_(as_json: AsJson = False) -> None:
    """List users (name, role, created); passwords are never shown."""
    config, _ = configure()

    async def main() -> list[User]:
        from corral.store import open_store

        async with await open_store(config.store_url) as store:
            return await list_users(store)

    users = run(main())
    if as_json:
        rows = [{"name": u.name, "role": u.role, "created_at": u.created_at} for u in users]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="dashboard users")
    for column in ("name", "role", "created"):
        table.add_column(column)
    for u in users:
        table.add_row(u.name, u.role, time.strftime("%Y-%m-%d %H:%M", time.localtime(u.created_at)))
    print_table(out, table)


@app.command()
def remove(name: Annotated[str, typer.Argument(help="The user's name.")]) -> None:
    """Remove user NAME; their dashboard sessions end within seconds."""
    config, _ = configure()

    async def main() -> bool:
        from corral.store import open_store

        async with await open_store(config.store_url) as store:
            return await remove_user(store, name, local_audit("user_remove", name))

    if not run(main()):
        run(_missing(name))
    out.print(f"removed user {name}")


async def _missing(name: str) -> None:
    raise UsageError(f"no user {name!r}: `corral user list` shows them")


def register(root: typer.Typer) -> None:
    """Add ``corral user`` to ``root``."""
    root.add_typer(app, name="user")
