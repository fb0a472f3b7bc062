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
                                                      leave, info, resume: the coordinator)
``corral.group.<g>.<id>.<to>``  group members         members of that group instance (data)
``corral.group.<g>.<id>.p.<r>`` group members         rank r of that instance (point to point)
``corral.cmd.node.<node>``      the controller        the command stream (JetStream): the
                                                      durable log of commands to one node
``corral.cmd.all``              the controller        the command stream: to many nodes
``corral.live.cmd``             the controller        every node: each command's serial,
                                                      live (core NATS), its body or a mark
``corral.node.<node>.cmd``      the controller        that node: the body of a command to
                                                      a few nodes, live
``corral.node.<node>.acks``     the controller        that node: final reports on disk
``corral.in.<node>.catchup``    the node              the controller: commands missed
``corral.events.cmd.<serial>``  the controller        operators (outcomes of a command)
``corral.events.report.<t>``    the controller        operators (reports on topic t)
``corral.in.<n>.stream.<s>.<i>`` the node             subscriber i of its stream s
``corral.guardian.<g>.<verb>``  people, managers      guardian g (request, mode, revive,
                                                      pause, reload, view, graph)
``$KV.corral_guardians.<g>``    guardian g            viewers, managers (KV watch)
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
    "COMMANDS",
    "COMMANDS_ALL",
    "COMMAND_STREAM",
    "LIVE_COMMANDS",
    "command_consumer",
    "report_acks",
    "live_commands_for",
    "CATCHUP_VERB",
    "command_events",
    "commands_for",
    "report_events",
    "stream_items",
    "check_name",
    "group",
    "group_data",
    "group_p2p",
    "GUARDIAN_BUCKET",
    "GUARDIAN_VERBS",
    "guardian",
    "guardian_kv",
    "ctl",
    "ctl_as",
    "inbox_prefix",
    "is_node_in",
    "node_in",
    "node_events",
    "node_in_wildcard",
    "node_out",
    "parse_node_in",
    "parse_ctl_as",
]

ROOT = "corral"
ANNOUNCE = f"{ROOT}.announce"

#: Verbs a node may publish to the controller.
NODE_VERBS = frozenset({"join", "hb", "leave", "out", "report", "catchup"})

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


def ctl_as(verb: str, credential: str) -> str:
    """Subject of a request that changes state, sent with the credential named ``credential``.

    Each operator credential may publish only below its own name (its JWT says so and the
    server enforces it), so the controller derives who sent a request from its subject,
    as it does for nodes: ``ctl_as("send", "operator")`` is ``corral.ctl.send.operator``.
    """
    return f"{ROOT}.ctl.{verb}.{credential}"


def parse_ctl_as(subject: str) -> tuple[str, str]:
    """Split ``corral.ctl.<verb>.<credential>`` into ``(verb, credential)``.

    Raises:
        InvalidName: if the subject is not of that form.
    """
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != ROOT or parts[1] != "ctl":
        raise InvalidName(
            f"{subject!r} does not say which credential sent it (expected "
            "corral.ctl.<verb>.<credential>): update the client"
        )
    return parts[2], parts[3]


#: Every agent answers here with what it is (``corral agents``).
AGENTS_INFO = f"{ROOT}.agents.info"


def agent(name: str) -> str:
    """The inbox subject of agent ``name`` (``*``: every agent's)."""
    return f"{ROOT}.agent.{name}"


#: Every group subject (what a group member's credential allows).
GROUPS = f"{ROOT}.group.>"


def group(name: str, verb: str) -> str:
    """Subject of ``verb`` (join, beat, arrive, leave, info, resume) for group ``name``
    (``*``: every group)."""
    return f"{ROOT}.group.{name}.{verb}"


def group_data(name: str, group_id: str, to: str) -> str:
    """Where values of a formed group travel: ``to`` is ``all`` (distribute) or ``0`` (collect)."""
    return f"{ROOT}.group.{name}.{group_id}.{to}"


def group_p2p(name: str, group_id: str, to: str) -> str:
    """Inbox of rank ``to`` (``*``: any) of a group instance: point-to-point values.

    Args:
        name: the group's name.
        group_id: the group instance's id (``*``: any instance).
        to: the receiving rank, as text, or ``*``.

    Returns:
        ``corral.group.<name>.<id>.p.<to>`` (inside :data:`GROUPS`, so a member may use it).
    """
    return f"{ROOT}.group.{name}.{group_id}.p.{to}"


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


#: The JetStream stream holding every command (SEER's stored messages, replayed on return).
COMMAND_STREAM = "CORRAL_CMDS"
#: Every subject of the command stream.
COMMANDS = f"{ROOT}.cmd.>"
#: Commands for many nodes, in the stream (the durable log; nodes get them live).
COMMANDS_ALL = f"{ROOT}.cmd.all"


def commands_for(name: str) -> str:
    """Stream subject of commands addressed to node ``name`` alone."""
    return f"{ROOT}.cmd.node.{name}"


def command_consumer(name: str) -> str:
    """Name of node ``name``'s durable consumer on :data:`COMMAND_STREAM`, as earlier
    versions made it (a controller deletes them at start)."""
    return f"node-{name}"


#: Every command's serial, live (core NATS): one publish the server fans out to every node.
#: Outside :data:`COMMANDS`, so the stream does not store it twice.
LIVE_COMMANDS = f"{ROOT}.live.cmd"


def live_commands_for(name: str) -> str:
    """Subject of the live bodies of commands addressed to node ``name`` among a few."""
    return node_out(name, "cmd")


def report_acks(name: str) -> str:
    """Subject on which the controller confirms node ``name``'s final reports (batched)."""
    return node_out(name, "acks")


#: The verb of a node's catch-up request (``corral.in.<node>.catchup``).
CATCHUP_VERB = "catchup"


def command_events(serial: int | str = "*") -> str:
    """Subject of outcome updates of command ``serial`` (``*``: every command's)."""
    return f"{ROOT}.events.cmd.{serial}"


def report_events(topic: str = "*") -> str:
    """Subject of report updates on ``topic`` (``*``: every topic's)."""
    return f"{ROOT}.events.report.{topic}"


def stream_items(node: str, stream: str, sid: str) -> str:
    """Where node ``node`` sends stream ``stream``'s items to subscriber ``sid``."""
    return f"{ROOT}.in.{node}.stream.{stream}.{sid}"


#: The JetStream key-value bucket holding every guardian's view (key: the guardian's name).
GUARDIAN_BUCKET = "corral_guardians"

#: Verbs a guardian answers on ``corral.guardian.<name>.<verb>``.
GUARDIAN_VERBS = frozenset({"request", "mode", "revive", "pause", "reload", "view", "graph"})


def guardian(name: str, verb: str) -> str:
    """Subject of ``verb`` addressed to guardian ``name`` (``*``/``>`` wildcards allowed)."""
    return f"{ROOT}.guardian.{name}.{verb}"


def guardian_kv(name: str) -> str:
    """The subject a put of guardian ``name``'s key goes to (``*``: every guardian's)."""
    return f"$KV.{GUARDIAN_BUCKET}.{name}"


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
