"""What `corral up` shows while it runs: one message while the controller starts, then a live
table on a terminal, or a line per change without one (a pipe, a log file, a service)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel

from corral import wire
from corral.cli.admin import nodes_table
from corral.cli.common import err, waiting
from corral.client import Client
from corral.config import Config
from corral.errors import ControllerUnavailable, CorralError
from corral.tokens import admin_token_path

__all__ = ["watch_up"]

Children = dict[str, subprocess.Popen[bytes]]


def _header_lines(config: Config, url: str, children: Children, apis: list[str]) -> list[str]:
    exited = [
        f"[red]{name} exited ({proc.returncode}): see {name}.log[/]"
        for name, proc in children.items()
        if proc.poll() is not None
    ]
    lines = [
        f"bus        {url}",
        f"store      {config.store_url}",
        f"data dir   {config.data_path}",
        f"logs       {config.data_path / 'logs'}",
        f"HTTP API   {apis[0]}/docs  (token in {admin_token_path(config)})",
        *(
            [f"controllers {', '.join(apis)}  (one leads; `--api {','.join(apis)}` follows it)"]
            if len(apis) > 1
            else []
        ),
        f"dashboard  {apis[0]}/ui  (sign in with that token, or `corral user add`)",
        f"processes  {len(children)} children, "
        f"{sum(1 for p in children.values() if p.poll() is None)} running",
        *exited,
        "Ctrl-C stops everything.",
    ]
    return lines


def _header(config: Config, url: str, children: Children, apis: list[str]) -> Panel:
    return Panel(
        "\n".join(_header_lines(config, url, children, apis)),
        title="corral up",
        title_align="left",
    )


async def watch_up(
    config: Config, url: str, children: Children, apis: list[str] | None = None
) -> None:
    """Say once that the controller starts, then show the nodes: a live table on a terminal,
    a line per change otherwise (so a log or a pipe follows along). ``apis``: each
    controller's API URL (default: the configured one)."""
    apis = apis or [config.api_url]
    client = await Client.connect(config, wait=10.0)
    try:
        log = config.data_path / "logs" / "controller.log"
        with waiting(f"starting the controller (its log: {log})"):
            views = await _first_answer(client, children["controller"], log)
        if err.is_terminal:
            await _live_table(client, config, url, children, apis)
        else:
            await _live_lines(client, config, url, children, apis, views)
    finally:
        await client.close()


async def _first_answer(
    client: Client, controller: subprocess.Popen[bytes], log: Path
) -> list[wire.NodeView]:
    """The node list, once the controller answers; refuses if the controller exits first."""
    while True:
        if controller.poll() is not None:
            raise ControllerUnavailable(
                f"the controller exited (status {controller.returncode}) while starting: see {log}"
            )
        try:
            return await client.nodes()
        except ControllerUnavailable:
            await asyncio.sleep(0.25)


async def _live_table(
    client: Client, config: Config, url: str, children: Children, apis: list[str]
) -> None:
    with Live(_header(config, url, children, apis), console=err, refresh_per_second=4) as live:
        while True:
            try:
                body: Any = nodes_table(await client.nodes(), time.time())
            except CorralError as exc:
                body = f"[yellow]{exc}[/]"
            live.update(Group(_header(config, url, children, apis), body))
            await asyncio.sleep(0.5)


async def _live_lines(
    client: Client,
    config: Config,
    url: str,
    children: Children,
    apis: list[str],
    views: list[wire.NodeView],
) -> None:
    for line in _header_lines(config, url, children, apis):
        err.print(line, highlight=False, soft_wrap=True)
    shown: dict[str, str] = {}
    exited: set[int] = set()  # pids: a restarted controller is a new process
    trouble = ""
    while True:
        for view in views:
            if shown.get(view.name) != view.status:
                shown[view.name] = view.status
                stamp = time.strftime("%H:%M:%S")
                err.print(f"{stamp} {view.name} {view.status}", highlight=False, soft_wrap=True)
        for name, proc in children.items():
            if proc.pid not in exited and proc.poll() is not None:
                exited.add(proc.pid)
                err.print(f"[red]{name} exited ({proc.returncode}): see {name}.log[/]")
        await asyncio.sleep(0.5)
        try:
            views, problem = await client.nodes(), ""
        except CorralError as exc:
            problem = str(exc)
        if problem != trouble:  # say each problem once, and once that it is gone
            trouble = problem
            err.print(f"[yellow]{problem}[/]" if problem else "the controller answers again")
