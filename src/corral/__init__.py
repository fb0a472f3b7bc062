"""corral: a control plane for fleets of machines and processes.

The public API is what this module exports; everything else is private and may change.
"""

from typing import TYPE_CHECKING

from corral._version import __version__ as __version__
from corral.agent import Agent as Agent
from corral.agent import Message as Message
from corral.agent import on as on
from corral.client import Client as Client
from corral.config import Config as Config
from corral.config import load_config as load_config
from corral.core.registry import NodeStatus as NodeStatus
from corral.errors import AgentError as AgentError
from corral.errors import (
    AuthError as AuthError,
)
from corral.errors import (
    BusUnavailable as BusUnavailable,
)
from corral.errors import (
    ConfigError as ConfigError,
)
from corral.errors import ControllerError as ControllerError
from corral.errors import (
    ControllerUnavailable as ControllerUnavailable,
)
from corral.errors import (
    CorralError as CorralError,
)
from corral.errors import (
    DuplicateName as DuplicateName,
)
from corral.errors import NoSuchAgent as NoSuchAgent
from corral.errors import Overloaded as Overloaded
from corral.errors import (
    Refused as Refused,
)
from corral.errors import TaskFailed as TaskFailed
from corral.errors import (
    Timeout as Timeout,
)
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
from corral.wire import NodeView as NodeView

if TYPE_CHECKING:
    from corral.api_client import AsyncController as AsyncController
    from corral.api_client import Controller as Controller
    from corral.api_client import WebController as WebController
    from corral.app import ControllerService as ControllerService
    from corral.controller.reports import aggregator as aggregator
    from corral.tasks import TaskContext as TaskContext
    from corral.tasks import task as task


def __getattr__(name: str) -> object:
    # The controller service pulls in SQLAlchemy and Alembic, the API client httpx; node
    # processes need neither, and importing them would cost every node a third of a second.
    if name == "ControllerService":
        from corral.app import ControllerService

        return ControllerService
    if name == "aggregator":
        from corral.controller.reports import aggregator

        return aggregator
    if name in ("Controller", "AsyncController", "WebController"):
        from corral import api_client

        return getattr(api_client, name)
    if name in ("task", "TaskContext"):
        from corral import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")


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
