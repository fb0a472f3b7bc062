"""The only place a bus subject is built or parsed.

Theory of operation: identity comes from the subject. A node's credential lets it publish only
below ``corral.in.<its name>.``, so when the controller receives a heartbeat on
``corral.in.web1.hb`` it knows that web1 sent it, without trusting anything in the payload.
The scheme:

==============================  ====================  ================================
subject                         who publishes         who listens
==============================  ====================  ================================
``corral.in.<node>.<verb>``     the node              the controller (join, hb, leave)
``corral.node.<node>.<verb>``   the controller        that node (ctl, cmd)
``corral.announce``             the controller        every node (SEER pingExperiment)
``corral.ctl.<verb>``           operators (CLI, API)  the controller
``corral.events.node.<node>``   the controller        operators (status transitions)
``corral.agent.<name>``         anyone with an agent  the agent (its inbox; a queue group
                                credential            for a pool)
``corral.agents.info``          operators, agents     every agent (scatter-gather listing)
``corral.group.<g>.<verb>``     group members         the controller (join, beat, arrive,
                                                      leave: the coordinator)
``corral.group.<g>.<id>.<to>``  group members         members of that group instance (data)
``_INBOX.corral.<node>.>``      repliers              that node (its private inbox)
==============================  ====================  ================================
"""

from __future__ import annotations

import re

from corral.errors import InvalidName

__all__ = [
    "TASK_HELLO_VERB",
    "TASK_MAP_VERB",
    "TASK_REPORT_VERB",
    "node_tasks",
    "AGENTS_INFO",
    "GROUPS",
    "ANNOUNCE",
    "NODE_VERBS",
    "agent",
    "check_name",
    "group",
    "group_data",
    "ctl",
    "inbox_prefix",
    "is_node_in",
    "node_in",
    "node_events",
    "node_in_wildcard",
    "node_out",
    "parse_node_in",
]

ROOT = "corral"
ANNOUNCE = f"{ROOT}.announce"

#: Verbs a node may publish to the controller.
NODE_VERBS = frozenset({"join", "hb", "leave"})

# A name is one subject token: no dots, no wildcards, no whitespace. Kept to a portable set so
# the same name works as a file name (credential files) and a SQL key.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(name: str, what: str = "node") -> str:
    """Return ``name`` if it can be used as a node (or agent, group) name.

    Args:
        name: the proposed name.
        what: the kind of thing named, for the error message.

    Returns:
        The same name.

    Raises:
        InvalidName: if the name is empty, too long, or has characters other than letters,
            digits, ``-`` and ``_`` (it must not start with ``-`` or ``_``).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit (dots and wildcards are reserved by the bus)"
        )
    return name


def node_in(name: str, verb: str) -> str:
    """Subject on which node ``name`` tells the controller ``verb`` (join, hb, leave)."""
    return f"{ROOT}.in.{name}.{verb}"


def is_node_in(subject: str) -> bool:
    """True for a ``corral.in.<node>.<verb>`` subject (sent by a node about itself)."""
    return subject.startswith(f"{ROOT}.in.")


def node_in_wildcard(verb: str) -> str:
    """Subject the controller subscribes to for ``verb`` from every node."""
    return f"{ROOT}.in.*.{verb}"


def node_out(name: str, verb: str) -> str:
    """Subject on which the controller addresses node ``name`` (``ctl``, later ``cmd``)."""
    return f"{ROOT}.node.{name}.{verb}"


def ctl(verb: str) -> str:
    """Subject of an operator request to the controller, e.g. ``ctl("nodes")``."""
    return f"{ROOT}.ctl.{verb}"


#: Every agent answers here with what it is (``corral agents``).
AGENTS_INFO = f"{ROOT}.agents.info"


def agent(name: str) -> str:
    """The inbox subject of agent ``name`` (``*``: every agent's)."""
    return f"{ROOT}.agent.{name}"


#: Every group subject (what a group member's credential allows).
GROUPS = f"{ROOT}.group.>"


def group(name: str, verb: str) -> str:
    """Subject of ``verb`` (join, beat, arrive, leave) for group ``name`` (``*``: every group)."""
    return f"{ROOT}.group.{name}.{verb}"


def group_data(name: str, group_id: str, to: str) -> str:
    """Where values of a formed group travel: ``to`` is ``all`` (distribute) or ``0`` (collect)."""
    return f"{ROOT}.group.{name}.{group_id}.{to}"


def node_events(name: str = "*") -> str:
    """Subject of node ``name``'s status transitions (``*``: every node's)."""
    return f"{ROOT}.events.node.{name}"


def inbox_prefix(name: str) -> str:
    """The private reply-inbox prefix of node ``name`` (only it may subscribe there)."""
    return f"_INBOX.{ROOT}.{name}"


def parse_node_in(subject: str) -> tuple[str, str]:
    """Split ``corral.in.<node>.<verb>`` into ``(node, verb)``.

    Args:
        subject: a subject received on a :func:`node_in_wildcard` subscription.

    Returns:
        The node name and the verb.

    Raises:
        InvalidName: if the subject is not of that form.
    """
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != ROOT or parts[1] != "in":
        raise InvalidName(f"not a node subject: {subject!r} (expected corral.in.<node>.<verb>)")
    return parts[2], parts[3]


# --- tasks (issue #4) -----------------------------------------------------------------------
# ``corral.in.<node>.tasks``    node -> controller: progress and results (TaskReport)
# ``corral.in.<node>.workers``  node -> controller: its task keys and slots (TaskHello, request)
# ``corral.node.<node>.tasks``  controller -> node: runs, stops, acks

#: Verbs a node's task workers publish to the controller.
TASK_REPORT_VERB = "tasks"
TASK_HELLO_VERB = "workers"
#: A running task maps a subtask over items (``corral.in.<node>.map``, request).
TASK_MAP_VERB = "map"


def node_tasks(name: str) -> str:
    """Where the controller sends node ``name`` its task runs, stops and acks."""
    return node_out(name, "tasks")
