"""Process groups through a controller restart: a new coordinator rebuilds them from members."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import TracebackType

from conftest import child_env, eventually, scaled
from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.group import Group
from test_group import leave_all, members

MEMBER = textwrap.dedent(
    """
    import asyncio, sys
    from corral.group import Group

    async def main():
        g = await Group.join(sys.argv[1], 3, rank=2, startup_timeout=30)
        print("first", list(await g.barrier(timeout=30)), flush=True)
        await asyncio.Event().wait()  # until killed

    asyncio.run(main())
    """
)


class Relay:
    """One controller at a time on the test's bus and store: :meth:`restart` stops the one
    running (its coordinator and everything it held in memory go) and starts the next;
    leaving the ``async with`` stops whichever runs."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.running: ControllerService | None = None

    async def start(self) -> ControllerService:
        """Start a new controller (none may be running)."""
        assert self.running is None
        started = ControllerService(self.config)
        await started.start()
        self.running = started
        return started

    async def stop(self) -> None:
        """Stop the running controller, if any."""
        running, self.running = self.running, None
        if running is not None:
            await running.stop()

    async def restart(self) -> ControllerService:
        """Stop the running controller, then start the next."""
        await self.stop()
        return await self.start()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def test_a_group_survives_a_controller_restart(
    broker: EmbeddedBroker, config: Config
) -> None:
    async with Relay(config) as relay:
        gs = await members(config, "ha", 3)
        try:
            reached = await asyncio.gather(*(g.barrier(timeout=scaled(5)) for g in gs))
            assert reached == [[0, 1, 2]] * 3
            await relay.restart()
            reached = await asyncio.gather(*(g.barrier(timeout=scaled(10)) for g in gs))
            assert reached == [[0, 1, 2]] * 3 and reached[0].missing == ()
            rows = await asyncio.gather(*(g.collect(g.rank * 10) for g in gs))
            assert rows[0] == [0, 10, 20] and rows[0] is not None and rows[0].missing == ()
            assert {g.id for g in gs} == {gs[0].id}  # the same instance: data still meets
        finally:
            await leave_all(gs)


async def test_a_barrier_in_flight_when_the_controller_stops_completes_on_the_next(
    broker: EmbeddedBroker, config: Config
) -> None:
    async with Relay(config) as relay:
        gs = await members(config, "flight", 3)
        try:
            waiting = [asyncio.ensure_future(g.barrier(timeout=scaled(20))) for g in gs[:2]]
            await relay.stop()  # ranks 0 and 1 wait on a coordinator that is gone
            assert not any(w.done() for w in waiting)
            await relay.start()
            reached = await asyncio.gather(*waiting, gs[2].barrier(timeout=scaled(20)))
            assert reached == [[0, 1, 2]] * 3
            again = await asyncio.gather(*(g.barrier(timeout=scaled(10)) for g in gs))
            assert again == [[0, 1, 2]] * 3
        finally:
            await leave_all(gs)


async def test_a_group_still_forming_when_the_controller_stops_forms_on_the_next(
    broker: EmbeddedBroker, config: Config
) -> None:
    """Joins waiting on a coordinator that is gone are sent again to the next one (it nudges
    the members it does not know), which forms the group with the member that comes later."""
    async with Relay(config) as relay:
        started = relay.running
        assert started is not None
        joining = [
            asyncio.ensure_future(
                Group.join("forming", 3, rank=r, startup_timeout=scaled(30), config=config)
            )
            for r in (0, 1)
        ]

        async def two_waiting() -> bool:
            assert started.groups is not None
            g = started.groups.groups.get(("forming", ""))
            return g is not None and len(g.members) == 2

        try:
            await eventually(two_waiting, scaled(10))
            await relay.stop()  # the two joins wait on a coordinator that is gone
            assert not any(j.done() for j in joining)
            await relay.start()
            last = await Group.join("forming", 3, rank=2, startup_timeout=scaled(30), config=config)
            gs = [*await asyncio.gather(*joining), last]
            try:
                assert sorted(g.rank for g in gs) == [0, 1, 2]
                assert {g.id for g in gs} == {last.id}  # one instance, formed on the second
                reached = await asyncio.gather(*(g.barrier(timeout=scaled(10)) for g in gs))
                assert reached == [[0, 1, 2]] * 3
            finally:
                await leave_all(gs)
        finally:
            for j in joining:
                j.cancel()


async def test_a_member_killed_while_no_controller_ran_is_missing_next_round(
    broker: EmbeddedBroker, config: Config, tmp_path: Path
) -> None:
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    env = {**child_env(config), "CORRAL_DATA_DIR": str(config.data_path)}
    async with Relay(config) as relay:
        child = subprocess.Popen(
            [sys.executable, str(script), "gap"], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            joins = (
                Group.join("gap", 3, rank=r, config=config, startup_timeout=scaled(20))
                for r in (0, 1)
            )
            gs = sorted(await asyncio.gather(*joins), key=lambda g: g.rank)
            try:
                await asyncio.gather(*(g.barrier(timeout=scaled(10)) for g in gs))
                assert child.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), scaled(10))
                assert line.startswith("first [0, 1, 2]")
                await relay.stop()
                os.kill(child.pid, signal.SIGKILL)  # dies while no coordinator runs
                child.wait(timeout=scaled(10))
                await relay.start()
                reached = await asyncio.gather(*(g.barrier(timeout=scaled(10)) for g in gs))
                assert reached == [[0, 1], [0, 1]]
                assert reached[0].missing == (2,) and reached[0].left_out == {2: "dead"}
                rows = await asyncio.gather(*(g.collect(g.rank) for g in gs))
                assert rows[0] == [0, 1, None] and rows[0] is not None
                assert rows[0].missing == (2,)
            finally:
                await leave_all(gs)
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
