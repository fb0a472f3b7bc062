"""Operator commands: init, enroll, revoke, nodes, config show."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from corral import pki, wire
from corral.cli.common import (
    AsJson,
    Wait,
    configure,
    connects,
    err,
    fail,
    local_audit,
    print_table,
    run,
)
from corral.client import Client
from corral.config import FIELDS, Config
from corral.errors import BusUnavailable, ControllerUnavailable, CorralError
from corral.security import Authority, write_secret
from corral.sender import Sender
from corral.states import NodeStatus

__all__ = ["initialise", "nodes_table", "register"]

out = Console(emoji=False)  # "agent:telescope:" is a name, not an emoji code


def initialise(config: Config, *, tls: bool = True, names: list[str] | None = None) -> bool:
    """Create the authority (and CA) of ``config``'s data directory unless it exists.

    Returns:
        True if it was created now.
    """
    data = config.data_path
    if Authority.exists(data):
        Authority.load(data).ensure_role_credentials()
        return False
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    Authority.create(data)
    if tls:
        pki_dir = data / "pki"
        pki.make_ca(pki_dir)
        pki.make_server_cert(pki_dir, [config.nats_host, *(names or [])])
    return True


def init(
    san: Annotated[
        list[str] | None,
        typer.Option(help="Extra DNS name or IP the bus is reached by (repeatable)."),
    ] = None,
    tls: Annotated[bool, typer.Option(help="Make a CA and serve the bus over TLS.")] = True,
) -> None:
    """Create the data directory: operator keys, controller/admin credentials, TLS CA.

    Safe to run twice: an existing authority is kept. For an external nats-server, include
    `<data_dir>/auth/nats-auth.conf` in its configuration.
    """
    config, _ = configure()
    created = initialise(config, tls=tls, names=san)
    data = config.data_path
    if not created and san and (data / "pki" / "ca.pem").exists():
        pki.make_server_cert(data / "pki", [config.nats_host, *san])
        out.print(f"re-issued the server certificate for {', '.join(san)} (restart the bus)")
    store = run(_create_store(config))
    verb = "created" if created else "already initialised:"
    out.print(f"[green]{verb}[/] {data}")
    if store:
        out.print(f"  store         {store}  (back it up: docs/operations.md)")
    out.print(f"  credentials   {data / 'auth'}  (controller.creds, admin.creds)")
    if (data / "pki" / "ca.pem").exists():
        out.print(f"  TLS CA        {data / 'pki' / 'ca.pem'}  (give it to nodes: --ca)")
    out.print(f"  external NATS include {data / 'auth' / 'nats-auth.conf'}")
    out.print("next: `corral controller`, then `corral enroll NAME` for each node")


async def _create_store(config: Config) -> str:
    """Create (or check) the SQLite store so `corral init` makes it, 0600; '' for PostgreSQL.

    A PostgreSQL store is migrated by the controller at its first start: the server need
    not be reachable when the data directory is made.
    """
    # Imported here: SQLAlchemy and the drivers cost every other CLI command (`corral node`
    # included) a third of a second at start.
    from sqlalchemy.engine import make_url

    from corral.store import normalize_url, open_store

    url = normalize_url(config.store_url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return ""
    async with await open_store(url):
        pass
    return parsed.database or ""


async def _notify(config: Config, event: wire.AuthEvent) -> bool:
    """Tell a running controller (audit log, registry); if none runs, write the audit entry
    to the store directly, as the local user. False if neither could be done."""
    try:
        async with await Client.connect(config) as client:
            await client.auth_event(event)
    except (ControllerUnavailable, BusUnavailable):
        return await _audit_locally(config, event)
    except CorralError as exc:
        err.print(f"[yellow]warning:[/] could not tell the controller: {exc}", soft_wrap=True)
        return False
    return True


async def _audit_locally(config: Config, event: wire.AuthEvent) -> bool:
    """Append the enrollment or revocation to the store's audit log (no controller runs)."""
    from corral.store import open_store

    entry = local_audit(
        event.action, event.name, keys=list(event.keys), host=event.host, pid=event.pid
    )
    try:
        async with await open_store(config.store_url) as store:
            await store.commit(audit=[entry])
    except CorralError as exc:
        err.print(f"[yellow]warning:[/] could not write the audit log: {exc}", soft_wrap=True)
        return False
    return True


def enroll(
    name: Annotated[str, typer.Argument(help="The node's (or agent's) unique name.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the credential (default NAME.creds here)."),
    ] = None,
    agent: Annotated[
        bool, typer.Option("--agent", help="A credential for agent NAME instead of a node.")
    ] = False,
) -> None:
    """Issue a credential file for node NAME (as Salt accepts a minion key).

    Copy the file to the node's machine and start it with
    `corral node --name NAME --creds NAME.creds --nats URL --ca ca.pem`. With `--agent`, the
    file lets a process on another machine run agent NAME and talk to every agent
    (`CORRAL_CREDS=NAME.creds`).
    """
    config, _ = configure()
    try:
        authority = Authority.load(config.data_path)
        creds = authority.enroll_agent(name) if agent else authority.enroll(name)
    except CorralError as exc:
        fail(exc)
    target = out_file or Path(f"{name}.creds")
    write_secret(target, creds)
    registered = f"agent:{name}" if agent else name
    key = authority.enrolled()[registered][-1].public_key
    event = wire.AuthEvent(
        action="enroll",
        name=registered,
        actor=_actor(),
        keys=(key,),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    audited = run(_notify(config, event))
    out.print(f"[green]enrolled[/] {registered}: credential written to {target} (mode 0600)")
    if not audited:
        out.print(
            "[yellow]note:[/] no controller running, and the store could not be written; "
            "the enrollment is not in the audit log"
        )


def _actor() -> str:
    return f"{os.environ.get('USER', 'unknown')}@{socket.gethostname()}"


async def _revoke(config: Config, name: str) -> tuple[list[str], bool]:
    authority = Authority.load(config.data_path)
    keys = authority.revoke(name)
    authority.write_server_fragment()
    pushed = False
    # Push the re-signed account JWT: the server closes the node's connections at once.
    from corral import bus

    try:
        nc = await bus.connect(
            config, "system", creds=authority.directory / "system.creds", name="corral-revoke"
        )
    except CorralError:
        nc = None
    if nc is not None:
        try:
            reply = await nc.request(
                "$SYS.REQ.CLAIMS.UPDATE", authority.account_jwt().encode(), timeout=5
            )
            pushed = b'"code":200' in reply.data
        finally:
            await nc.close()
    event = wire.AuthEvent(
        action="revoke",
        name=name,
        actor=_actor(),
        keys=tuple(keys),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    await _notify(config, event)
    return keys, pushed


def revoke(
    name: Annotated[str, typer.Argument(help="The node to revoke.")],
    agent: Annotated[
        bool, typer.Option("--agent", help="Revoke agent NAME's credentials.")
    ] = False,
) -> None:
    """Revoke every credential of node NAME, effective immediately.

    The bus closes the node's connections and refuses new ones; the controller marks it
    REVOKED. Nothing restarts. `corral enroll NAME` issues a new credential later.
    """
    config, _ = configure()
    name = f"agent:{name}" if agent else name
    keys, pushed = run(_revoke(config, name))
    out.print(f"[green]revoked[/] {name} ({len(keys)} credential(s) revoked now)")
    if not pushed:
        out.print(
            "[yellow]note:[/] the bus was not reachable; the revocation takes effect when the "
            "embedded server next starts (for an external server, re-include nats-auth.conf)"
        )


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


_STYLE = {
    NodeStatus.UP: "green",
    NodeStatus.DOWN: "red",
    NodeStatus.LEFT: "dim",
    NodeStatus.REVOKED: "magenta",
}


def nodes_table(nodes: list[wire.NodeView], now: float | None = None) -> Table:
    """The registry as a Rich table."""
    now = time.time() if now is None else now
    table = Table(title=f"{len(nodes)} node(s)", title_justify="left")
    for col in ("name", "status", "since", "labels", "interfaces", "sink", "host", "pid"):
        table.add_column(col, overflow="fold")
    table.add_column("slots", justify="right")
    table.add_column("serial", justify="right")
    table.add_column("behind", justify="right")
    table.add_column("cpu/mem/disk%", justify="right")
    for n in nodes:
        style = _STYLE.get(n.status, "")
        table.add_row(
            n.name,
            f"[{style}]{n.status}[/]" if style else n.status,
            _age(now - n.since),
            ",".join(n.labels),
            ",".join(n.interfaces),
            "yes" if n.attributes.get("sink") else "",
            n.host,
            str(n.pid),
            str(n.slots),
            str(n.last_serial),
            f"[yellow]{n.behind}[/]" if n.behind else "",
            _stats(n),
        )
    return table


def _stats(node: wire.NodeView) -> str:
    """CPU, memory and disk percent from the node's last heartbeat, as ``12/40/70`` (blank:
    none, or it is not UP and they would be stale; ``--json`` has them all, and the load)."""
    if not node.stats or node.status != "UP":
        return ""
    keys = ("cpu_percent", "mem_percent", "disk_percent")
    return "/".join(f"{node.stats.get(k, 0.0):.0f}" for k in keys)


async def _nodes(config: Config) -> list[wire.NodeView]:
    async with await Client.connect(config) as client:
        return await client.nodes()


def nodes(as_json: AsJson = False) -> None:
    """List the nodes the controller knows, with status and since when."""
    config, _ = configure()
    views = run(_nodes(config))
    if as_json:
        print(json.dumps(msgspec.to_builtins(views), indent=2))
    else:
        print_table(out, nodes_table(views))


async def _agents(config: Config, wait: float) -> list[wire.AgentInfo]:
    async with await Client.connect(config) as client:
        return await client.agents(wait)


def agents(as_json: AsJson = False, wait: Wait = 0.5) -> None:
    """List the live agents: name, host, pid, handlers, uptime, messages, last error.

    `--wait SECONDS`: how long to listen for their answers.
    """
    config, _ = configure()
    found = run(_agents(config, wait))
    if as_json:
        print(json.dumps(msgspec.to_builtins(found), indent=2))
        return
    now = time.time()
    table = Table(title=f"{len(found)} agent(s)", title_justify="left")
    for col in ("name", "host", "pid", "handlers", "up", "handled", "waiting", "overflow"):
        table.add_column(col)
    table.add_column("last error", style="red")
    for a in found:
        name = f"{a.name} (pool)" if a.pool else a.name
        table.add_row(
            name,
            a.host,
            str(a.pid),
            ", ".join(a.handlers),
            _age(now - a.started),
            str(a.handled),
            str(a.waiting),
            str(a.overflow),
            a.last_error,
        )
    print_table(out, table)


def _data(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"--data must be JSON ({exc}); quote strings: '\"text\"'"
        ) from None


async def _talk(config: Config, name: str, message: str, data: Any, timeout: float | None) -> Any:
    async with await Client.connect(config) as client:
        sender = Sender(client.nc, "admin")
        if timeout is None:
            await sender.send_to(name, message, data)
            await client.nc.flush()
            return None
        return await sender.ask(name, message, data, timeout=timeout)


def ask(
    name: Annotated[str, typer.Argument(help="The agent's name.")],
    message: Annotated[str, typer.Argument(help="The message (a handler's name).")],
    data: Annotated[str | None, typer.Option(help="JSON data for the handler.")] = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the reply.")] = 5.0,
    wait: Annotated[
        float | None, typer.Option("--wait", min=0, metavar="SECONDS", help="Same as --timeout.")
    ] = None,
) -> None:
    """Send MESSAGE to agent NAME and print its reply as JSON.

    Example: `corral ask scheduler status`, or with data:
    `corral ask scheduler observe --data '{"target": "M31"}'`.
    """
    config, _ = configure()
    reply = run(_talk(config, name, message, _data(data), timeout if wait is None else wait))
    print(json.dumps(reply, indent=2, default=repr))


def send_to(
    name: Annotated[str, typer.Argument(help="The agent's name.")],
    message: Annotated[str, typer.Argument(help="The message (a handler's name).")],
    data: Annotated[str | None, typer.Option(help="JSON data for the handler.")] = None,
) -> None:
    """Send MESSAGE to agent NAME, fire and forget (`corral send-to scheduler SHUTDOWN`)."""
    config, _ = configure()
    run(_talk(config, name, message, _data(data), None))


config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(as_json: AsJson = False) -> None:
    """Print every setting's effective value and where it came from."""
    config, sources = configure()
    values = msgspec.to_builtins(config)
    values["data_dir"] = str(config.data_path)
    values["store"] = config.store_url
    if as_json:
        print(json.dumps(values, indent=2))
        return
    table = Table(title="effective configuration (file < CORRAL_* env < flags)")
    for col in ("setting", "value", "source"):
        table.add_column(col)
    for name in FIELDS:
        table.add_row(name, repr(values[name]), sources.get(name, "default"))
    print_table(out, table)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    app.command()(init)
    app.command()(enroll)
    app.command()(revoke)
    app.command()(connects(nodes))
    app.command()(connects(agents))
    app.command()(connects(ask))
    app.command("send-to")(connects(send_to))
    app.add_typer(config_app, name="config")
