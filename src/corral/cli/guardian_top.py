"""``corral guardian show`` and ``corral guardian top``: one guardian's view, and a
monitor-only top node aggregating every guardian's OK (LIGO Guardian's top node)."""

from __future__ import annotations

import json
from typing import Annotated

import msgspec
import typer

from corral import wire
from corral.cli.common import AsJson, run
from corral.cli.guardian import (
    CaOpt,
    CredsOpt,
    NameArg,
    NatsOpt,
    bus_config,
    guardian_app,
    out,
    print_view,
)
from corral.errors import NoSuchGuardian
from corral.guardian.client import GuardianClient
from corral.states import GuardianMode, GuardianStatus

__all__ = ["show", "top"]


@guardian_app.command()
def show(
    name: NameArg,
    as_json: AsJson = False,
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    ca: CaOpt = None,
) -> None:
    """Guardian NAME's view: state, request, nominal, mode, status, OK, notifications, log.

    A guardian that stopped or went silent shows CONNECTION_ERROR (its last known view).
    """
    config = bus_config(nats, creds, ca)

    async def main() -> wire.GuardianView:
        async with await GuardianClient.connect(config) as client:
            for view in await client.list():
                if view.name == name:
                    return view
        raise NoSuchGuardian(
            f"no guardian named {name!r} ever published a view: `corral guardian list` shows "
            "the ones that did"
        )

    view = run(main())
    if as_json:
        print(json.dumps(msgspec.to_builtins(view), indent=2))
        return
    print_view(view, config)


@guardian_app.command()
def top(
    names: Annotated[
        list[str] | None, typer.Argument(help="The guardians to watch over (default: all).")
    ] = None,
    as_json: AsJson = False,
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    ca: CaOpt = None,
) -> None:
    """A monitor-only top node: every guardian's OK and the aggregate (exit 1 if not all OK).

    It requests nothing and takes no guardian into MANAGED mode. OK is LIGO's: executing,
    AUTO or MANAGED, REQUEST == STATE == NOMINAL, done, no error, connected.
    """
    config = bus_config(nats, creds, ca)

    async def main() -> tuple[bool, list[wire.GuardianView]]:
        async with await GuardianClient.connect(config) as client:
            return await client.top(names or ())

    ok, views = run(main())
    if as_json:
        print(json.dumps({"ok": ok, "views": msgspec.to_builtins(views)}, indent=2))
        raise typer.Exit(0 if ok else 1)
    for v in views:
        why = "" if v.ok else _why_not_ok(v)
        out.print(
            f"{v.name}: {'OK' if v.ok else 'not OK'}  {v.state or '?'} "
            f"(request {v.request or '?'}, nominal {v.nominal or '-'}, {v.mode or '?'}, "
            f"{v.status}){why}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(f"TOP: {'OK' if ok else 'not OK'} ({sum(v.ok for v in views)}/{len(views)} OK)")
    if not ok:
        raise typer.Exit(1)


def _why_not_ok(v: wire.GuardianView) -> str:
    if v.status == GuardianStatus.CONNECTION_ERROR:
        return "  - not connected"
    if v.paused:
        return "  - paused"
    if v.mode not in (GuardianMode.AUTO, GuardianMode.MANAGED):
        return f"  - mode {v.mode}"
    if v.error or v.status == GuardianStatus.ERROR:
        return "  - error"
    if v.nominal and v.request != v.nominal:
        return f"  - request {v.request} is not nominal {v.nominal}"
    if v.state != v.request or not v.arrived:
        return "  - not arrived"
    return f"  - {v.status}"
