"""Process groups over a real nats-server with the controller as coordinator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import eventually, scaled
from corral import bus, subjects, wire
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.controller import Controller
from corral.errors import GroupRefused, GroupTimeout, MalformedMessage, UsageError
from corral.group import Group
from corral.group_p2p import join_across_takeovers
from corral.security import GROUP_INBOX


async def members(config: Config, name: str, size: int, **kw: Any) -> list[Group]:
    groups = await asyncio.gather(
        *(
            Group.join(name, size, config=config, startup_timeout=scaled(10), **kw)
            for _ in range(size)
        )
    )
    return sorted(groups, key=lambda g: g.rank)


async def leave_all(groups: list[Group]) -> None:
    await asyncio.gather(*(g.leave() for g in groups))


async def test_barrier_collect_distribute(controller: Controller, config: Config) -> None:
    gs = await members(config, "trio", 3)
    try:
        assert [g.rank for g in gs] == [0, 1, 2] and {g.size for g in gs} == {3}
        assert len({g.id for g in gs}) == 1
        reached = await asyncio.gather(*(g.barrier(timeout=scaled(5)) for g in gs))
        assert reached == [[0, 1, 2]] * 3
        rows = await asyncio.gather(*(g.collect({"rank": g.rank}) for g in gs))
        assert rows[0] == [{"rank": 0}, {"rank": 1}, {"rank": 2}] and rows[1:] == [None, None]
        assert rows[0] is not None and rows[0].missing == ()
        values = await asyncio.gather(*(g.distribute(f"from {g.rank}") for g in gs))
        assert values == ["from 0"] * 3
    finally:
        await leave_all(gs)


async def test_a_20_mb_value_is_distributed_in_chunks(
    controller: Controller, config: Config
) -> None:
    big = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    gs = await members(config, "big", 2)
    try:
        out = await asyncio.gather(*(g.distribute(big if g.rank == 0 else None) for g in gs))
        assert out[1] == big
    finally:
        await leave_all(gs)


async def test_a_timeout_names_the_ranks_that_did_not_arrive(
    controller: Controller, config: Config
) -> None:
    gs = await members(config, "late", 3)
    try:
        with pytest.raises(GroupTimeout, match=r"ranks \[1, 2\] did not arrive") as err:
            await gs[0].barrier(timeout=0.5)
        assert err.value.missing == (1, 2)
    finally:
        await leave_all(gs)


async def test_a_member_out_of_step_is_refused(controller: Controller, config: Config) -> None:
    gs = await members(config, "step", 2)
    try:
        first = asyncio.create_task(gs[0].barrier(timeout=scaled(5)))
        # The controller must have started the barrier before the other member is out of step.
        assert controller.groups is not None
        async with asyncio.timeout(scaled(5)):
            while not any(g.round is not None for g in controller.groups.groups.values()):
                await asyncio.sleep(0.01)
        with pytest.raises(GroupRefused, match="called collect #1 while the group is at barrier"):
            await gs[1].collect("x", timeout=scaled(5))
        first.cancel()
    finally:
        await leave_all(gs)


async def test_startup_failures_renumber_the_members_that_made_it(
    controller: Controller, config: Config
) -> None:
    gs = await asyncio.gather(
        *(
            Group.join(
                "partial", 8, config=config, startup_timeout=scaled(3), allow_startup_failures=True
            )
            for _ in range(6)
        )
    )
    try:
        assert sorted(g.rank for g in gs) == list(range(6))
        assert {(g.size, g.asked) for g in gs} == {(6, 8)}
    finally:
        await leave_all(list(gs))


async def test_startup_timeout_without_failures_allowed(
    controller: Controller, config: Config
) -> None:
    with pytest.raises(GroupTimeout, match="only 1 of 2 members"):
        await Group.join("alone", 2, config=config, startup_timeout=0.5)


async def test_values_must_be_msgpack_able(controller: Controller, config: Config) -> None:
    gs = await members(config, "bad", 1)
    try:
        with pytest.raises(MalformedMessage, match="msgpack-able"):
            await gs[0].collect(object())
    finally:
        await leave_all(gs)


async def test_two_runs_of_one_name_do_not_mix(controller: Controller, config: Config) -> None:
    a = await members(config, "same", 2, run="run-a")
    b = await members(config, "same", 2, run="run-b")
    try:
        assert {g.id for g in a}.isdisjoint({g.id for g in b})
        va, vb = await asyncio.gather(
            asyncio.gather(*(g.distribute("A") for g in a)),
            asyncio.gather(*(g.distribute("B") for g in b)),
        )
        assert va == ["A", "A"] and vb == ["B", "B"]
        with pytest.raises(GroupRefused, match="already running"):
            await Group.join("same", 2, run="run-a", config=config, startup_timeout=1)
    finally:
        await leave_all(a + b)


async def test_the_coordinator_refuses_nonsense_joins(
    controller: Controller, config: Config
) -> None:
    from corral import bus, subjects, wire
    from corral.group_p2p import coordinator_request
    from corral.security import GROUP_INBOX

    nc = await bus.connect(config, "group", inbox_prefix=GROUP_INBOX)
    try:
        bad = wire.GroupJoin(member="m", size=0)
        with pytest.raises(GroupRefused, match="size must be >= 1"):
            await coordinator_request(nc, subjects.group("x", "join"), bad, wire.GroupFormed, 5)
        with pytest.raises(MalformedMessage):
            reply = await nc.request(subjects.group("x", "join"), b"\xc1", headers=wire.HEADERS)
            wire.decode_reply(reply.data, wire.GroupFormed, reply.headers)
    finally:
        await nc.close()


# --- point to point (socketComm's writeDataTo / readDataFrom, issue #17) --------------------


async def test_point_to_point_values_arrive_in_order_per_pair(
    controller: Controller, config: Config
) -> None:
    gs = await members(config, "p2p", 3)
    try:
        for i in range(20):
            await gs[0].write_data_to(2, {"from": 0, "i": i})
            await gs[1].write_data_to(2, ["one", i])
        await gs[2].write_data_to(0, "back")
        got0 = [await gs[2].read_data_from(0, timeout=scaled(5)) for _ in range(20)]
        got1 = [await gs[2].read_data_from(1, timeout=scaled(5)) for _ in range(20)]
        assert got0 == [{"from": 0, "i": i} for i in range(20)]
        assert got1 == [["one", i] for i in range(20)]
        assert await gs[0].read_data_from(2, timeout=scaled(5)) == "back"
        # Rank 1 got nothing from rank 0: a timeout that names the rank.
        with pytest.raises(GroupTimeout, match="nothing came from rank 0") as err:
            await gs[1].read_data_from(0, timeout=0.3)
        assert err.value.missing == (0,)
    finally:
        await leave_all(gs)


async def test_a_5_mb_point_to_point_value_travels_in_chunks(
    controller: Controller, config: Config
) -> None:
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    gs = await members(config, "p2pbig", 2)
    try:
        await gs[1].write_data_to(0, big)
        await gs[1].write_data_to(0, "after")
        assert await gs[0].read_data_from(1, timeout=scaled(10)) == big
        assert await gs[0].read_data_from(1, timeout=scaled(5)) == "after"
    finally:
        await leave_all(gs)


async def test_point_to_point_with_a_dead_left_or_missing_rank_fails_clearly(
    controller: Controller, config: Config
) -> None:
    gs = await members(config, "p2pgone", 3)
    try:
        with pytest.raises(UsageError, match="has no rank 7: its ranks are 0..2"):
            await gs[0].write_data_to(7, "x")
        with pytest.raises(UsageError, match="has no rank -1"):
            await gs[0].read_data_from(-1)
        with pytest.raises(UsageError, match="rank 0 is this member"):
            await gs[0].read_data_from(0)
        # A value written before leaving is still read; then the departure is an error.
        await gs[2].write_data_to(0, "last words")
        await gs[2].leave()
        assert await gs[0].read_data_from(2, timeout=scaled(5)) == "last words"
        with pytest.raises(GroupRefused, match="rank 2 of group 'p2pgone' left the group"):
            await gs[0].read_data_from(2, timeout=scaled(10))
        with pytest.raises(GroupRefused, match="rank 2 .* left the group; nothing can be sent"):
            await gs[0].write_data_to(2, "x")
        # A crash (no goodbye): rank 1 stops beating; the reader is told it died.
        for task in gs[1]._tasks:
            task.cancel()
        await gs[1].nc.close()
        with pytest.raises(GroupRefused, match="rank 1 of group 'p2pgone' died"):
            await gs[0].read_data_from(1, timeout=scaled(config.down_after * 6))
        info = await gs[0].info(1)
        assert (info["rank"], info["state"], info["size"], info["group"]) == (
            1,
            "dead",
            3,
            "p2pgone",
        )
        me = await gs[0].info()
        assert me["state"] == "alive" and me["rank"] == 0 and me["pid"] > 0
    finally:
        await leave_all(gs[:1])


async def test_a_cancelled_join_leaves_no_request_waiting_on_the_coordinator(
    broker: EmbeddedBroker, config: Config
) -> None:
    """A member cancelled while its join waits (through a takeover) stops asking: its request
    does not stay behind, waiting for a reply nobody would read, until its own timeout."""
    coordinator = await bus.connect(config, "controller")
    member = await bus.connect(config, "group", inbox_prefix=GROUP_INBOX)
    asked = asyncio.Event()

    async def never_answer(_: Any) -> None:
        asked.set()

    try:
        await coordinator.subscribe(subjects.group("slow", "join"), cb=never_answer)
        await coordinator.flush()
        join = wire.GroupJoin(member="m", size=2, startup_timeout=60)
        joining = asyncio.ensure_future(
            join_across_takeovers(
                member, subjects.group("slow", "join"), join, asyncio.Event(), poll=0.5
            )
        )
        await asyncio.wait_for(asked.wait(), scaled(10))
        joining.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joining

        async def none_left() -> bool:
            return not [
                t
                for t in asyncio.all_tasks()
                if getattr(t.get_coro(), "__name__", "") == "coordinator_request"
            ]

        await eventually(none_left, scaled(5))
    finally:
        await member.close()
        await coordinator.close()
