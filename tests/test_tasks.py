"""Tasks end to end in one process (controller, node) with real worker processes and NATS:
results, failures with tracebacks, cancellation (queued, cooperative, forced), progress."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import scaled
from corral import AsyncController, TaskFailed
from corral.config import Config
from corral.controller import Controller
from corral.errors import NotSerializable, UnknownTask
from corral.node import Node
from tasks_fixtures import api, node  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("node")


@pytest.fixture
def config(config: Config) -> Config:
    """A short grace period, so a forced cancel kills within the test's patience."""
    config.cancel_grace = 0.3
    return config


async def until_exists(path: Path, timeout: float = 15) -> None:
    async with asyncio.timeout(scaled(timeout)):
        while not path.exists():
            await asyncio.sleep(0.01)


async def test_sync_and_async_tasks_return_their_results(api: AsyncController) -> None:  # noqa: F811
    assert await api.run("add", a=2, b=3) == 5
    echoed = await api.run("echo", value={"nested": [1, "two", None]})
    assert echoed["value"] == {"nested": [1, "two", None]} and echoed["attempt"] == 1
    ids = await api.queue_tasks("add", [{"a": i, "b": i} for i in range(50)])
    assert [v.result for v in await api.wait_many(ids, scaled(20))] == [2 * i for i in range(50)]


async def test_a_wait_answers_before_the_final_commit_and_reads_see_it(
    api: AsyncController,  # noqa: F811
    controller: Controller,
) -> None:
    """A result is answered once the controller holds it (its lease already on disk), the
    final commit following; the API's reads of the store wait for that commit."""
    assert controller.tasks is not None
    for i in range(20):
        done = await api.run_task("add", {"a": i, "b": 1})
        history = await api.task_history("add", per_page=1)
        assert (done.status, done.result) == ("complete", i + 1)
        assert history.items[0].id == done.id and history.items[0].status == "complete"
        assert (await api.task_history_detail(done.id)).result == i + 1
        assert (await api.list_running()).total == 0
    # and the store has the final state itself once the commit that follows is done
    await controller.tasks.settled()
    assert controller.tasks.store is not None
    stored = await controller.tasks.store.get(done.id)
    assert stored is not None and stored.status == "complete"


async def test_a_task_that_raises_fails_with_its_traceback(api: AsyncController) -> None:  # noqa: F811
    ident = await api.queue_task("boom", message="no fuel")
    with pytest.raises(TaskFailed, match="ValueError: no fuel") as caught:
        await api.result(ident, scaled(10))
    view = caught.value.instance
    assert view.status == "failed" and view.attempts == 1
    assert "raise ValueError(message)" in view.traceback and "Traceback" in view.traceback
    stored = await api.task_history_detail(ident)
    assert stored.traceback == view.traceback and stored.history[0]["outcome"] == "failed"


async def test_arguments_are_checked_before_anything_is_queued(api: AsyncController) -> None:  # noqa: F811
    with pytest.raises(NotSerializable, match="msgpack"):
        await api.queue_task("echo", value=object())
    with pytest.raises(UnknownTask, match="no node offers task 'nope'") as caught:
        await api.queue_task("nope")
    assert caught.value.code == -3 and caught.value.status == 404
    assert (await api.task_history("echo")).total == 0


async def test_cancel_a_queued_instance_dequeues_it(
    api: AsyncController,  # noqa: F811
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    # A key never measured: 2 slots x 1 held by the node; the rest waits in the queue.
    blockers = await api.queue_tasks("wait_for_file", [{"path": str(gate)}] * 8)
    ident = await api.queue_task("echo", value="never")
    assert (await api.task_history_detail(ident)).status == "queued"
    cancelled = await api.cancel_task(ident)
    assert cancelled.status == "cancelled" and cancelled.attempts == 0
    gate.write_text("go")
    await api.wait_many(blockers, scaled(20))
    stored = await api.task_history_detail(ident)
    assert (stored.status, stored.node, stored.history) == ("cancelled", "", [])
    assert (await api.list_queue()).total == 0


async def test_cancel_a_running_task_stops_it_through_its_flag(
    api: AsyncController,  # noqa: F811
    tmp_path: Path,
    node: Node,  # noqa: F811
) -> None:
    started = tmp_path / "started"
    ident = await api.queue_task(
        "wait_for_file", path=str(tmp_path / "never"), started=str(started)
    )
    await until_exists(started)
    async with asyncio.timeout(scaled(10)):
        while not any(s.progress == 50 for s in await api.task_statuses()):
            await asyncio.sleep(0.02)
    asked = await api.cancel_task(ident)
    assert asked.status in ("cancel-requested", "cancelled")
    final = await api.wait(ident, scaled(10))
    assert final.status == "cancelled" and "asked to stop" in final.error
    # The worker process survived (a cooperative stop kills nothing).
    assert node.workers is not None
    assert int(started.read_text()) in {w.proc.pid for w in node.workers.workers}
    assert all(w.proc.returncode is None for w in node.workers.workers)


async def test_forced_cancel_kills_a_task_that_ignores_its_flag(
    api: AsyncController,  # noqa: F811
    tmp_path: Path,
    node: Node,  # noqa: F811
) -> None:
    started = tmp_path / "started"
    ident = await api.queue_task("stubborn", started=str(started))
    await until_exists(started)
    await api.cancel_task(ident, force=True)
    final = await api.wait(ident, scaled(15))
    assert final.status == "cancelled" and "killed" in final.error
    # Tasks run on, and the pool replaces the killed process.
    pids = {(await api.run("echo"))["pid"] for _ in range(4)}
    assert int(started.read_text()) not in pids
    assert node.workers is not None
    async with asyncio.timeout(scaled(15)):
        while int(started.read_text()) in {w.proc.pid for w in node.workers.workers}:
            await asyncio.sleep(0.02)
    assert len(node.workers.workers) == 2
    assert all(w.proc.returncode is None for w in node.workers.workers)


async def test_cancelling_a_finished_task_changes_nothing(api: AsyncController) -> None:  # noqa: F811
    ident = await api.queue_task("add", a=1, b=1)
    await api.wait(ident, scaled(10))
    view = await api.cancel_task(ident)
    assert view.status == "complete" and view.result == 2


async def test_worker_slots_show_in_node_status(api: AsyncController, node: Node) -> None:  # noqa: F811
    (status,) = await api.node_status()
    assert status.name == "w1" and status.status == "UP"
    assert [w.state for w in status.workers] == ["idle", "idle"]
    assert "echo" in status.keys
    keys = {v.key for v in await api.list_tasks()}
    assert {"echo", "add", "boom"} <= keys and "square" not in keys  # a subtask
    assert "square" in {v.key for v in await api.list_tasks(toplevel=False)}


async def test_parallel_map_returns_results_in_item_order(
    api: AsyncController,  # noqa: F811
    controller: Controller,
) -> None:
    assert await api.run("squares", n=12, timeout=scaled(30)) == [x * x for x in range(12)]
    parent = (await api.task_history("squares")).items[0]
    children = (await api.call("task_history", key="square", per_page=100))["items"]
    assert sorted(c["item"] for c in children) == list(range(12))
    assert {c["parent"] for c in children} == {parent.id}
    assert controller.tasks is not None and controller.tasks.maps == {}
    assert all(n.lent == 0 for n in controller.tasks.core.nodes.values())


async def test_a_map_asked_for_again_is_answered_from_the_same_children(
    api: AsyncController,  # noqa: F811
    controller: Controller,
    node: Node,  # noqa: F811
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    ident = await api.queue_task("slow_squares", n=3, gate=str(gate))
    assert controller.tasks is not None and node.workers is not None
    async with asyncio.timeout(scaled(10)):  # taken up: in the map, and the first ask answered
        while ident not in controller.tasks.maps or node.workers.maps.asking:
            await asyncio.sleep(0.02)
    first = controller.tasks.maps[ident]
    for _ in range(2):  # what the node does after a hello, and every MAP_REASK seconds
        node.workers.maps.reask()
        asks = list(node.workers.maps.tasks)  # (each map asked for in a task of its own)
        assert len(asks) == 1
        await asyncio.wait_for(asyncio.gather(*asks), scaled(10))
        assert controller.tasks.maps[ident] is first
    gate.write_text("go")
    assert (await api.wait(ident, scaled(20))).result == [0, 1, 4]
    assert (await api.task_history("slow_square", per_page=100)).total == 3
    assert all(n.lent == 0 for n in controller.tasks.core.nodes.values())


async def test_one_failing_item_fails_the_parent_with_its_error(api: AsyncController) -> None:  # noqa: F811
    ident = await api.queue_task("squares", n=20)
    final = await api.wait(ident, scaled(30))
    assert final.status == "failed"
    assert "item 13 of square" in final.error and "13 is unlucky" in final.error
    assert "TaskFailed" in final.traceback
    caught = await api.run("squares_or_none", n=14, timeout=scaled(30))
    assert caught.startswith("caught: item 13 of square")


async def test_cancelling_a_mapping_parent_cancels_its_children(
    api: AsyncController,  # noqa: F811
    controller: Controller,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    ident = await api.queue_task("slow_squares", n=6, gate=str(gate))
    assert controller.tasks is not None
    async with asyncio.timeout(scaled(10)):
        while ident not in controller.tasks.maps:
            await asyncio.sleep(0.02)
    await api.cancel_task(ident, force=True)
    parent = await api.wait(ident, scaled(15))
    assert parent.status == "cancelled"
    gate.write_text("go")  # let the killed or waiting children's workers move on
    children = (await api.task_history("slow_square", per_page=100)).items
    assert len(children) == 6
    finished = await api.wait_many([c.id for c in children], scaled(20))
    assert {c.status for c in finished} <= {"cancelled", "complete"}
    assert "cancelled" in {c.status for c in finished}


async def test_runs_given_while_a_killed_worker_restarts_are_not_lost(
    api: AsyncController,  # noqa: F811
    tmp_path: Path,
    node: Node,  # noqa: F811
) -> None:
    started = tmp_path / "started"
    stubborn = await api.queue_task("stubborn", started=str(started))
    await until_exists(started)
    await api.cancel_task(stubborn, force=True)
    # Queued at once: some land on the dying worker and must reach its replacement.
    ids = await api.queue_tasks("add", [{"a": i, "b": 1} for i in range(20)])
    done = await api.wait_many(ids, scaled(20))
    assert [d.result for d in done] == [i + 1 for i in range(20)]
    assert (await api.wait(stubborn, scaled(10))).status == "cancelled"


async def test_six_tasks_on_three_idle_two_slot_nodes_run_on_all_three(
    api: AsyncController,  # noqa: F811
    controller: Controller,
    config: Config,
    tmp_path: Path,
) -> None:
    from tasks_fixtures import offered, start_task_node

    others = [await start_task_node(config, name) for name in ("w2", "w3")]
    try:
        for other in others:
            await offered(controller, other.name)
        gate = tmp_path / "gate"
        marks = [tmp_path / f"started-{n}" for n in range(6)]
        ids = [
            await api.queue_task("wait_for_file", path=str(gate), started=str(mark))
            for mark in marks
        ]
        # All six run at once: two slots on each of the three nodes.
        for mark in marks:
            await until_exists(mark)
        views = [await api.task_history_detail(i) for i in ids]
        assert sorted(v.node for v in views) == ["w1", "w1", "w2", "w2", "w3", "w3"]
        async with asyncio.timeout(scaled(10)):
            while any(v.status != "running" for v in views):
                await asyncio.sleep(0.02)
                views = [await api.task_history_detail(i) for i in ids]
        assert all(v.started_at is not None for v in views)
        # A seventh waits in the queue: a task that never finished yet is prefetched one to
        # a slot (docs/tasks.md, "Prefetch"), so no worker's pipe holds it behind a long one.
        seventh = await api.queue_task("wait_for_file", path=str(gate))
        waiting = await api.task_history_detail(seventh)
        assert (waiting.status, waiting.started_at, waiting.node) == ("queued", None, "")
        gate.write_text("go")
        done = await api.wait(seventh, scaled(15))
        assert done.status == "complete" and done.started_at is not None
        assert done.started_at >= (done.history[-1].get("assigned") or 0.0)
    finally:
        for other in others:
            await other.stop()
