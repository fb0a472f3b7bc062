"""``corral token``: API tokens for the HTTP API (create, list, revoke).

Tokens live in the store (hashed), so these commands open it directly: run them where the
store is (the controller's host, or anywhere with the PostgreSQL DSN).
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from corral.cli.common import AsJson, configure, err, local_audit, print_table, run
from corral.errors import UsageError
from corral.tokens import Role, Token, create_token, list_tokens, revoke_token

__all__ = ["register"]

out = Console(emoji=False, highlight=False)
app = typer.Typer(help="API tokens for the controller's HTTP API.", no_args_is_help=True)


@app.command()
def create(
    role: Annotated[
        str, typer.Option(help="read, operate, execute or admin (each allows the ones before).")
    ],
    name: Annotated[str, typer.Option(help="A name to recognise it by.")] = "",
) -> None:
    """Create a token with ROLE and print it (once: only its hash is stored)."""
    config, _ = configure()
    if role not in {r.value for r in Role}:
        raise typer.BadParameter(f"unknown role {role!r}: use read, operate, execute or admin")

    async def main() -> tuple[Token, str]:
        from corral.store import open_store

        async with await open_store(config.store_url) as store:
            return await create_token(store, role, name, local_audit("token_create", ""))

    token, text = run(main())
    print(text)
    err.print(
        f"token {token.id} ({token.role}) created; it is shown only now. Use it with "
        f"`CORRAL_API_TOKEN=...` or `Controller(url, token=...)`"
    )


@app.command(name="list")
def list_(as_json: AsJson = False) -> None:
    """List tokens (id, name, role, created, revoked); secrets are never shown."""
    config, _ = configure()

    async def main() -> list[Token]:
        from corral.store import open_store

        async with await open_store(config.store_url) as store:
            return await list_tokens(store)

    tokens = run(main())
    if as_json:
        print(json.dumps(msgspec.to_builtins(tokens), indent=2))
        return
    table = Table(title="API tokens")
    for column in ("id", "name", "role", "created", "revoked"):
        table.add_column(column)
    for t in tokens:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created_at))
        revoked = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(t.revoked_at)) if t.revoked_at else ""
        )
        table.add_row(t.id, t.name, t.role, when, revoked)
    print_table(out, table)


@app.command()
def revoke(ident: Annotated[str, typer.Argument(metavar="ID", help="The token's id.")]) -> None:
    """Revoke a token; the API refuses it within seconds."""
    config, _ = configure()

    async def main() -> bool:
        from corral.store import open_store

        async with await open_store(config.store_url) as store:
            return await revoke_token(store, ident, local_audit("token_revoke", ident))

    if not run(main()):
        run(_missing(ident))
    out.print(f"revoked token {ident}")


async def _missing(ident: str) -> None:
    raise UsageError(f"no live token {ident!r}: `corral token list` shows them")


def register(root: typer.Typer) -> None:
    """Add ``corral token`` to ``root``."""
    root.add_typer(app, name="token")
