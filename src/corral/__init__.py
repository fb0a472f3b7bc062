"""corral: a control plane for fleets of machines and processes.

The public API is what this module exports; everything else is private and may change.

Every public name is imported on first use (PEP 562): ``import corral`` costs only this
module, and a node process that imports ``corral.node`` pays for the node's modules alone, not
for the client, agents, the controller (SQLAlchemy, FastAPI) or the API client (httpx).
"""

import importlib
from typing import TYPE_CHECKING

from corral._version import __version__ as __version__

if TYPE_CHECKING:
    from corral.agent import Agent as Agent
    from corral.agent import Message as Message
    from corral.agent import on as on
    from corral.api_client import AsyncController as AsyncController
    from corral.api_client import Controller as Controller
    from corral.api_client import WebController as WebController
    from corral.app import ControllerService as ControllerService
    from corral.client import Client as Client
    from corral.config import Config as Config
    from corral.config import load_config as load_config
    from corral.controller.reports import aggregator as aggregator
    from corral.core.registry import NodeStatus as NodeStatus
    from corral.errors import AgentError as AgentError
    from corral.errors import AuthError as AuthError
    from corral.errors import BusUnavailable as BusUnavailable
    from corral.errors import ConfigError as ConfigError
    from corral.errors import ControllerError as ControllerError
    from corral.errors import ControllerUnavailable as ControllerUnavailable
    from corral.errors import CorralError as CorralError
    from corral.errors import DuplicateName as DuplicateName
    from corral.errors import NoSuchAgent as NoSuchAgent
    from corral.errors import Overloaded as Overloaded
    from corral.errors import Refused as Refused
    from corral.errors import TaskFailed as TaskFailed
    from corral.errors import Timeout as Timeout
    from corral.errors import UnknownMessage as UnknownMessage
    from corral.node import Node as Node
    from corral.node.handlers import command as command
    from corral.node.handlers import message_type as message_type
    from corral.node.handlers import on_reports as on_reports
    from corral.node.handlers import param as param
    from corral.outcomes import CommandHandle as CommandHandle
    from corral.sender import Sender as Sender
    from corral.sender import ask as ask
    from corral.sender import send_to as send_to
    from corral.tasks import TaskContext as TaskContext
    from corral.tasks import task as task
    from corral.wire import NodeView as NodeView

#: Public name -> the module that defines it (imported on first access).
_WHERE = {
    "Agent": "corral.agent",
    "Message": "corral.agent",
    "on": "corral.agent",
    "AsyncController": "corral.api_client",
    "Controller": "corral.api_client",
    "WebController": "corral.api_client",
    "ControllerService": "corral.app",
    "Client": "corral.client",
    "Config": "corral.config",
    "load_config": "corral.config",
    "aggregator": "corral.controller.reports",
    "NodeStatus": "corral.core.registry",
    "AgentError": "corral.errors",
    "AuthError": "corral.errors",
    "BusUnavailable": "corral.errors",
    "ConfigError": "corral.errors",
    "ControllerError": "corral.errors",
    "ControllerUnavailable": "corral.errors",
    "CorralError": "corral.errors",
    "DuplicateName": "corral.errors",
    "NoSuchAgent": "corral.errors",
    "Overloaded": "corral.errors",
    "Refused": "corral.errors",
    "TaskFailed": "corral.errors",
    "Timeout": "corral.errors",
    "UnknownMessage": "corral.errors",
    "Node": "corral.node",
    "command": "corral.node.handlers",
    "message_type": "corral.node.handlers",
    "on_reports": "corral.node.handlers",
    "param": "corral.node.handlers",
    "CommandHandle": "corral.outcomes",
    "Sender": "corral.sender",
    "ask": "corral.sender",
    "send_to": "corral.sender",
    "TaskContext": "corral.tasks",
    "task": "corral.tasks",
    "NodeView": "corral.wire",
}


def __getattr__(name: str) -> object:
    """Import a public name's module on first access (and a submodule, as an eager import would).

    Raises:
        AttributeError: ``name`` is neither a public name nor a submodule of corral.
    """
    where = _WHERE.get(name)
    if where is not None:
        value = getattr(importlib.import_module(where), name)
        globals()[name] = value  # the next access is a plain attribute read
        return value
    if not name.startswith("__"):
        # ``import corral; corral.client`` worked while this module imported everything.
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'corral' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "Agent",
    "AgentError",
    "AsyncController",
    "AuthError",
    "BusUnavailable",
    "Client",
    "CommandHandle",
    "Config",
    "ConfigError",
    "Controller",
    "ControllerError",
    "ControllerService",
    "ControllerUnavailable",
    "CorralError",
    "DuplicateName",
    "Message",
    "NoSuchAgent",
    "Node",
    "NodeStatus",
    "NodeView",
    "Overloaded",
    "Refused",
    "Sender",
    "TaskContext",
    "TaskFailed",
    "Timeout",
    "UnknownMessage",
    "WebController",
    "__version__",
    "aggregator",
    "ask",
    "command",
    "load_config",
    "message_type",
    "on",
    "on_reports",
    "param",
    "send_to",
    "task",
]
