"""From the pyros seed: agents and ``Sender.send_to`` written as a pyros user wrote them.

The seed: "Use Sender.send_to method, giving as first parameter the name of the targeted agent
(eg: Agent.SCHEDULER), and as second parameter the message (eg: Agent.SHUTDOWN)"; "send_to is
a static method, you don't need to instantiate a Sender"; agent names "are defined in the Agent
class, eg: Agent.SCHEDULER". Only the imports differ from pyros's code below.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest

from conftest import scaled
from corral import Agent, Sender
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import ConfigError, InvalidName
from test_agent import env_config  # noqa: F401 - fixture: the environment a script sees

# The deployment's agent names, declared once in a module both sides import.
Agent.declare("scheduler", "alert_manager")


class SchedulerAgent(Agent):
    MSG_OBS_FINISHED = "Observation finished"

    def __init__(self) -> None:
        Agent.__init__(self, Agent.SCHEDULER)
        self.actions_by_message[self.MSG_OBS_FINISHED] = self.observation_finished
        self.finished: list[Any] = []
        self.got_one = threading.Event()
        self.stopped = threading.Event()

    def work(self) -> None:
        pass  # pyros: start threads here

    def observation_finished(self, msg: Any) -> None:
        self.finished.append(msg.message)
        self.got_one.set()

    def shutdown(self) -> None:
        self.stopped.set()


def test_agent_name_constants_resolve_to_the_declared_names() -> None:
    assert Agent.SCHEDULER == "scheduler"
    assert Agent.ALERT_MANAGER == "alert_manager"
    assert Agent.SHUTDOWN == "SHUTDOWN"  # Agent's own message is untouched
    assert SchedulerAgent.SCHEDULER == "scheduler"  # through a subclass too

    class Telescope(Agent):  # an Agent subclass with a name declares it by itself
        name = "telescope-1"

    assert Agent.TELESCOPE_1 == "telescope-1"


def test_an_undeclared_constant_names_the_fix_and_the_declared_ones() -> None:
    with pytest.raises(AttributeError, match=r"Agent.NEVER_DECLARED_X.*Agent.declare\("):
        Agent.NEVER_DECLARED_X  # noqa: B018
    with pytest.raises(AttributeError, match="SCHEDULER \\('scheduler'\\)"):
        Agent.NEVER_DECLARED_X  # noqa: B018
    assert not hasattr(Agent, "lowercase_thing")  # only capital words are constants


def test_declaring_clashing_or_bad_names_is_refused() -> None:
    Agent.declare("scheduler")  # again: harmless
    with pytest.raises(ConfigError, match="'alert_manager' and 'alert-manager' would both be"):
        Agent.declare("alert-manager")
    with pytest.raises(ConfigError, match="Agent.SHUTDOWN is Agent's own"):
        Agent.declare("shutdown")
    with pytest.raises(InvalidName):
        Agent.declare("no spaces")


def test_send_to_and_ask_are_static_on_the_class_and_async_on_an_instance() -> None:
    assert not inspect.iscoroutinefunction(Sender.send_to)
    sender = Sender(nc=None, me="x")  # type: ignore[arg-type]
    assert inspect.iscoroutinefunction(sender.send_to)  # `await sender.send_to(...)` as before
    assert inspect.iscoroutinefunction(sender.ask)
    assert not inspect.iscoroutinefunction(Agent.send_to)


async def test_sender_send_to_on_the_class_reaches_the_agent_and_shuts_it_down(
    broker: EmbeddedBroker,
    env_config: Config,  # noqa: F811
) -> None:
    agent = SchedulerAgent()

    def pyros_code() -> None:
        agent.start()
        Sender.send_to(Agent.SCHEDULER, SchedulerAgent.MSG_OBS_FINISHED)  # positional
        assert agent.got_one.wait(scaled(10))
        Sender.send_to(name=Agent.SCHEDULER, message=SchedulerAgent.MSG_OBS_FINISHED)  # keyword
        assert Sender.ask(Agent.SCHEDULER, SchedulerAgent.MSG_OBS_FINISHED) is None  # in order
        Agent.send_to(Agent.SCHEDULER, Agent.SHUTDOWN)  # on Agent's class, as well
        assert agent.stopped.wait(scaled(10))

    try:
        await asyncio.wait_for(asyncio.to_thread(pyros_code), scaled(30))
    finally:
        agent.stop()
    assert agent.finished == [SchedulerAgent.MSG_OBS_FINISHED] * 3
