"""Agents addressed by name over a real nats-server (pyros Agent and Sender)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import child_env, scaled
from corral import Agent, Message, on, sender
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.errors import (
    AgentError,
    ConfigError,
    DuplicateName,
    MalformedMessage,
    NoSuchAgent,
    Overloaded,
    UnknownMessage,
)
from corral.security import Authority
from corral.sender import Sender

A = TypeVar("A", bound=Agent)


class Echo(Agent):
    name = "echo"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: list[Message] = []
        self.arrived = asyncio.Event()
        self.work_ran = False
        self.shutdown_ran = False

    def work(self) -> None:
        self.work_ran = True

    def shutdown(self) -> None:
        self.shutdown_ran = True

    @on("note")
    async def note(self, msg: Message) -> None:
        self.seen.append(msg)
        self.arrived.set()

    @on("echo")
    async def echo(self, msg: Message) -> Any:
        return {"you said": msg.data, "from": msg.sender}

    @on("where")
    def where(self, msg: Message) -> str:  # a sync handler runs in a worker thread
        return threading.current_thread().name

    @on("fail")
    async def fail(self, msg: Message) -> None:
        raise ValueError("bad input: " + str(msg.data))


@contextlib.asynccontextmanager
async def running(a: A) -> AsyncIterator[A]:
    """Run ``a`` on this loop for the block: serving on entry, stopped (shutdown run) on exit."""
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(a.serving(), scaled(10))
    try:
        yield a
    finally:
        a.stop()
        await asyncio.wait_for(task, scaled(5))


@pytest.fixture
async def agent(broker: EmbeddedBroker, config: Config) -> AsyncIterator[Echo]:
    async with running(Echo(config=config)) as a:
        yield a


async def test_work_runs_first_and_messages_arrive_by_name(agent: Echo, tx: Sender) -> None:
    assert agent.work_ran
    await tx.send_to("echo", "note", {"n": 1})
    await asyncio.wait_for(agent.arrived.wait(), scaled(5))
    assert agent.seen == [Message("note", {"n": 1}, "")]


async def test_ask_returns_the_handlers_reply(agent: Echo, tx: Sender) -> None:
    reply = await tx.ask("echo", "echo", [1, "two"])
    assert reply == {"you said": [1, "two"], "from": ""}


async def test_sync_handlers_run_off_the_event_loop(agent: Echo, tx: Sender) -> None:
    assert await tx.ask("echo", "where") != threading.current_thread().name


async def test_unknown_message_names_the_handled_ones(agent: Echo, tx: Sender) -> None:
    with pytest.raises(UnknownMessage, match="does not handle 'dance'.*'echo', 'fail'"):
        await tx.ask("echo", "dance")


async def test_a_raising_handler_answers_with_the_error_and_the_agent_goes_on(
    agent: Echo, tx: Sender
) -> None:
    with pytest.raises(AgentError, match="ValueError: bad input: 7"):
        await tx.ask("echo", "fail", 7)
    assert agent.last_error == "ValueError: bad input: 7"
    assert await tx.ask("echo", "echo", "still here") == {"you said": "still here", "from": ""}


async def test_ask_to_a_name_nobody_holds_fails_at_once(tx: Sender) -> None:
    # A 60 s timeout, yet it must fail within 5: NATS says "no responders" immediately.
    with pytest.raises(NoSuchAgent, match="no agent named 'nobody'"):
        await asyncio.wait_for(tx.ask("nobody", "hello", timeout=60), scaled(5))


async def test_data_that_is_not_msgpack_able_is_refused_at_the_sender(tx: Sender) -> None:
    with pytest.raises(MalformedMessage, match="msgpack-able"):
        await tx.send_to("echo", "note", object())


async def test_a_second_agent_with_a_live_name_is_refused(agent: Echo, config: Config) -> None:
    with pytest.raises(DuplicateName, match=r"held by a live agent .*pid \d+"):
        await Echo(config=config).run()


class Worker(Agent):
    name = "workers"
    pool = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.count = 0

    @on("job")
    async def job(self, msg: Message) -> int:
        self.count += 1
        return self.count


async def test_pool_members_share_the_messages(
    broker: EmbeddedBroker, config: Config, tx: Sender
) -> None:
    async with running(Worker(config=config)) as one, running(Worker(config=config)) as two:
        for _ in range(40):
            await tx.ask("workers", "job")
        counts = [one.count, two.count]
        assert sum(counts) == 40 and min(counts) > 0, counts  # all-to-one: chance 2**-39


async def test_shutdown_message_runs_shutdown_and_ends_run(
    broker: EmbeddedBroker, config: Config, tx: Sender
) -> None:
    a = Echo(config=config)
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(a.serving(), scaled(10))
    assert await tx.ask("echo", Agent.SHUTDOWN) is None
    await asyncio.wait_for(task, scaled(5))  # run() ends on the message alone
    assert a.shutdown_ran


class Slow(Agent):
    name = "slow"

    def __init__(self, release: asyncio.Event, **kw: Any) -> None:
        super().__init__(inbox_size=2, **kw)
        self.release = release
        self.busy = asyncio.Event()

    @on("work")
    async def work_on(self, msg: Message) -> str:
        self.busy.set()
        await self.release.wait()
        return "done"


async def test_a_slow_handler_cannot_grow_the_inbox_past_its_bound(
    broker: EmbeddedBroker, config: Config, tx: Sender
) -> None:
    release = asyncio.Event()
    async with running(Slow(release, config=config)) as a:
        asks = [asyncio.create_task(tx.ask("slow", "work", timeout=scaled(10)))]
        await asyncio.wait_for(a.busy.wait(), scaled(5))
        asks += [asyncio.create_task(tx.ask("slow", "work", timeout=scaled(10))) for _ in range(7)]
        # One message is being handled and two wait: the other five are refused at once.
        done, pending = await asyncio.wait(asks, timeout=scaled(5), return_when="FIRST_EXCEPTION")
        overloaded = [t for t in done if isinstance(t.exception(), Overloaded)]
        assert overloaded and "inbox of 2 messages is full" in str(overloaded[0].exception())
        release.set()
        results = await asyncio.gather(*asks, return_exceptions=True)
        assert results.count("done") == 3
        assert sum(isinstance(r, Overloaded) for r in results) == 5 == a.overflow
        async with await Client.connect(config) as client:
            (info,) = await client.agents()
        assert (info.name, info.overflow, info.handlers) == ("slow", 5, ("work",))


async def test_agents_are_listed_with_what_they_handle(agent: Echo, config: Config) -> None:
    async with await Client.connect(config) as client:
        (info,) = await client.agents()
    assert info.name == "echo" and info.handlers == ("echo", "fail", "note", "where")
    assert info.pid > 0 and info.started == agent.started and not info.pool


class SeedStyle(Agent):
    """pyros's way: message constants and actions_by_message filled in __init__."""

    SCHEDULER = "scheduler"
    MSG_OBS_FINISHED = "Observation finished"

    def __init__(self, config: Config) -> None:
        Agent.__init__(self, SeedStyle.SCHEDULER, config=config)
        self.actions_by_message[self.MSG_OBS_FINISHED] = self.observation_finished

    def observation_finished(self, msg: Message) -> str:
        return f"noted {msg.data}"


async def test_the_seed_style_works(broker: EmbeddedBroker, config: Config, tx: Sender) -> None:
    async with running(SeedStyle(config)):
        assert await tx.ask("scheduler", SeedStyle.MSG_OBS_FINISHED, 42) == "noted 42"


async def test_a_per_name_credential_holds_only_that_name(
    broker: EmbeddedBroker, config: Config, tmp_path: Path
) -> None:
    creds = tmp_path / "solo.creds"
    creds.write_text(Authority.load(config.data_path).enroll_agent("solo"))
    mine = Config(**{**_fields(config), "creds": str(creds)})
    with pytest.raises(ConfigError, match="is for 'agent:solo', not agent 'echo'"):
        await Echo(config=mine).run()
    async with running(Agent("solo", config=mine)):
        s = await Sender.connect(mine)
        try:
            with pytest.raises(UnknownMessage):
                await s.ask("solo", "hello")
            assert s.me == "solo"
        finally:
            await s.close()


def _fields(config: Config) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(config)


@pytest.fixture
def env_config(config: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """The module-level send_to/ask read the environment, like a user's script."""
    for key, value in child_env(config).items():
        if key.startswith("CORRAL_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("CORRAL_DATA_DIR", str(config.data_path))
    yield config
    if sender._shared is not None:
        from corral import sync

        sync.call(sender._shared.close())
        sender._shared = None


async def test_blocking_send_to_and_ask_from_a_script(env_config: Config, agent: Echo) -> None:
    from corral import ask, send_to

    def script() -> Any:
        send_to("echo", "note", "from a script")
        return ask("echo", "echo", "hi", timeout=5)

    assert await asyncio.to_thread(script) == {"you said": "hi", "from": ""}
    await asyncio.wait_for(agent.arrived.wait(), scaled(5))


def test_thread_started_agent_stops_cleanly_at_interpreter_exit(
    broker: EmbeddedBroker, config: Config
) -> None:
    script = textwrap.dedent(
        """
        from corral import Agent, ask, on

        class Greeter(Agent):
            name = "greeter"

            @on("hello")
            def hello(self, msg):
                return "hi " + msg.data

            def shutdown(self):
                print("shutdown ran", flush=True)

        Greeter().start()
        print(ask("greeter", "hello", "there"), flush=True)
        # the script ends here: atexit must stop the agent's thread cleanly
        """
    )
    env = {**child_env(config), "CORRAL_DATA_DIR": str(config.data_path)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hi there", "shutdown ran"]
    assert "Traceback" not in result.stderr


async def test_cli_asks_sends_and_lists_agents(agent: Echo, config: Config) -> None:
    import json as _json

    from test_cli import corral

    reply = await asyncio.to_thread(corral, config, "ask", "echo", "echo", "--data", '{"a": 1}')
    assert reply.returncode == 0, reply.stderr
    assert _json.loads(reply.stdout) == {"you said": {"a": 1}, "from": "admin"}
    sent = await asyncio.to_thread(corral, config, "send-to", "echo", "note", "--data", '"x"')
    assert sent.returncode == 0, sent.stderr
    await asyncio.wait_for(agent.arrived.wait(), scaled(5))
    assert agent.seen[-1] == Message("note", "x", "admin")
    missing = await asyncio.to_thread(corral, config, "ask", "ghost", "hi")
    assert missing.returncode == 1 and "no agent named 'ghost'" in missing.stderr
    listing = await asyncio.to_thread(corral, config, "agents", "--json")
    assert [a["name"] for a in _json.loads(listing.stdout)] == ["echo"]


async def test_stopping_answers_the_messages_still_waiting(
    broker: EmbeddedBroker, config: Config, tx: Sender
) -> None:
    release = asyncio.Event()
    a = Slow(release, config=config)
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(a.serving(), scaled(10))
    first = asyncio.create_task(tx.ask("slow", "work", timeout=scaled(30)))
    await asyncio.wait_for(a.busy.wait(), scaled(5))
    waiting = asyncio.create_task(tx.ask("slow", "work", timeout=scaled(30)))
    async with asyncio.timeout(scaled(5)):
        while a._inbox is None or a._inbox.qsize() < 1:  # the second ask is queued
            await asyncio.sleep(0.01)
    a.stop()
    await asyncio.wait_for(task, scaled(5))
    for ask in (first, waiting):  # in hand and queued: both answered at once, not after 30 s
        with pytest.raises(NoSuchAgent, match="stopped before handling this"):
            await asyncio.wait_for(ask, scaled(5))


async def test_serving_raises_why_run_could_not_start(agent: Echo, config: Config) -> None:
    second = Echo(config=config)
    task = asyncio.create_task(second.run())
    with pytest.raises(DuplicateName):
        await asyncio.wait_for(second.serving(), scaled(5))
    with pytest.raises(DuplicateName):
        await task


async def test_the_controller_lists_agents_for_api_clients(
    controller: object, agent: Echo, config: Config
) -> None:
    from corral import bus, subjects, wire

    async with await Client.connect(config) as client:
        reply = await bus.request(
            client.nc, subjects.ctl("agents"), wire.AgentsRequest(wait=0.3), wire.AgentsReply
        )
    assert [(a.name, a.handlers) for a in reply.agents] == [
        ("echo", ("echo", "fail", "note", "where"))
    ]


class BrokenStart(Agent):
    name = "broken"

    def work(self) -> None:
        raise RuntimeError("no telescope attached")


async def test_a_failing_work_stops_the_start_and_frees_the_name(
    broker: EmbeddedBroker, config: Config, tx: Sender
) -> None:
    with pytest.raises(RuntimeError, match="no telescope attached"):
        await BrokenStart(config=config).run()
    with pytest.raises(NoSuchAgent):
        await tx.ask("broken", "anything")
