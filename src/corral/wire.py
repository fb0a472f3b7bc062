"""Every message that crosses the bus, as msgspec Structs encoded in msgpack.

Theory of operation: each subject carries one message type, so a receiver decodes with a
decoder built for exactly that type and validation happens in the same pass as parsing. Replies
are a tagged union of the expected answer and :class:`ErrorReply`. The protocol version travels
in the ``Corral-Proto`` header of every message; :func:`decode` refuses a missing header or
another major version with an error that names both versions, before touching the payload.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import msgspec
import msgspec.inspect

from corral._version import __version__
from corral.errors import (
    MalformedMessage,
    OversizedMessage,
    VersionMismatch,
    from_wire,
    to_wire,
)
from corral.states import (
    CommandState,
    GuardianStatus,
    NodeStatus,
    TaskOutcome,
)
from corral.states import (
    GuardianMode as GuardianModeName,
)

__all__ = [
    "StreamControl",
    "StreamItems",
    "ReportAck",
    "LiveCommand",
    "CatchUp",
    "CatchUpReply",
    "CommandRequest",
    "CommandAccepted",
    "NodeCommand",
    "CommandReport",
    "CommandReports",
    "MAX_BATCHED_REPORTS",
    "encode_reports",
    "OutcomeView",
    "CommandView",
    "CommandUpdate",
    "CommandQuery",
    "CommandsQuery",
    "CommandsReply",
    "Report",
    "ReportEntry",
    "ReportUpdate",
    "ReportsQuery",
    "NodeTaskMessage",
    "TaskAck",
    "TaskAssign",
    "TaskHello",
    "TaskKillWorker",
    "TaskParam",
    "TaskSignature",
    "TaskMap",
    "TaskMapped",
    "TaskProgress",
    "TaskReport",
    "TaskResync",
    "TaskResult",
    "TaskStarted",
    "NodeStats",
    "TaskRun",
    "TaskStop",
    "AgentsRequest",
    "AgentsReply",
    "GroupRound",
    "GroupLeave",
    "GroupResume",
    "GroupJoin",
    "GroupFormed",
    "GroupChunk",
    "GroupInfo",
    "GroupInfoRequest",
    "GroupRank",
    "GroupBeat",
    "GroupArrive",
    "GuardianGraph",
    "GuardianGraphRequest",
    "GuardianMode",
    "GuardianPause",
    "GuardianReload",
    "GuardianRequest",
    "GuardianRevive",
    "GuardianState",
    "GuardianView",
    "GuardianViewRequest",
    "AgentReply",
    "AgentMessage",
    "AgentInfoRequest",
    "AgentInfo",
    "EPOCH_HEADER",
    "HEADERS",
    "PROTO_HEADER",
    "PROTOCOL_VERSION",
    "Announce",
    "AuthEvent",
    "ErrorReply",
    "Heartbeat",
    "Join",
    "JoinReply",
    "Leave",
    "NodeEvent",
    "NodeView",
    "NodesReply",
    "NodesRequest",
    "Ok",
    "Rejoin",
    "StatsReply",
    "StatsRequest",
    "decode",
    "decode_reply",
    "encode",
    "epoch_of",
    "error_reply",
    "raise_for_error",
]

#: Major.minor of the wire protocol. A different major is refused; minors are compatible.
PROTOCOL_VERSION = "1.0"
PROTO_HEADER = "Corral-Proto"
#: Headers to send with every message.
HEADERS: dict[str, str] = {PROTO_HEADER: PROTOCOL_VERSION}
#: The leading controller's fencing epoch, on every message it publishes (nodes ignore a
#: message whose epoch is below the highest they have seen; absent: epoch 0)
EPOCH_HEADER = "Corral-Epoch"


def epoch_of(headers: dict[str, str] | None) -> int:
    """The epoch a message's headers carry (:data:`EPOCH_HEADER`), 0 if none or malformed."""
    raw = (headers or {}).get(EPOCH_HEADER, "")
    return int(raw) if raw.isdigit() and len(raw) <= 18 else 0


T = TypeVar("T")


class _Msg(msgspec.Struct, kw_only=True, frozen=True, tag=True):
    """Base of every wire message (tagged with its class name)."""


# --- node -> controller ---------------------------------------------------------------------


class Join(_Msg, frozen=True):
    """A node introduces itself (sent on ``corral.in.<name>.join``, request/reply)."""

    instance: str
    labels: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    host: str = ""
    pid: int = 0
    version: str = __version__
    slots: int = 1
    last_serial: int = 0
    #: the highest leader epoch the node has seen (a leader below it steps up above it)
    epoch: int = 0


class NodeStats(msgspec.Struct, frozen=True, array_like=True):
    """What a node's host is doing, sent with its heartbeats (an array: four numbers).

    Attributes:
        cpu_percent: CPU use since the previous sample, 0-100 (all cores).
        mem_percent: Memory in use, 0-100.
        disk_percent: Space used on the node's data directory's disk, 0-100.
        load1: The one-minute load average (0 where the system has none).
    """

    cpu_percent: float
    mem_percent: float
    disk_percent: float
    load1: float


class Heartbeat(_Msg, frozen=True):
    """A node is alive (published on ``corral.in.<name>.hb`` every heartbeat interval)."""

    instance: str
    last_serial: int = 0
    busy: int = 0
    #: its host's CPU, memory, disk and load (an older node sends none)
    stats: NodeStats | None = None
    #: the highest leader epoch the node has seen (a leader below it steps up above it)
    epoch: int = 0


class Leave(_Msg, frozen=True):
    """A node is stopping cleanly (``corral.in.<name>.leave``)."""

    instance: str
    reason: str = "stopped"


# --- controller -> node ---------------------------------------------------------------------


class Announce(_Msg, frozen=True):
    """The controller is here (``corral.ctl.announce``, periodic): nodes join when they see it."""

    controller: str
    started: float
    version: str = __version__
    heartbeat_interval: float = 1.0
    #: the last serial published on the live command subject: a node that heard less for
    #: a moment fetches what it missed (a lost last message shows no gap otherwise)
    last_serial: int = 0
    #: the leader's fencing epoch (nodes ignore an announcement below the highest seen)
    epoch: int = 0


class JoinReply(_Msg, frozen=True):
    """The controller accepted a join."""

    controller: str
    heartbeat_interval: float
    status: NodeStatus = NodeStatus.UP
    #: the controller's clock when it answered: nodes judge command ages by it
    now: float = 0.0
    #: for a node the registry did not know: broadcasts below this serial were resolved
    #: before it joined, and are not for it (0: no bound)
    first_serial: int = 0
    #: the last serial published on the live command subject: a returning node fetches
    #: what it missed up to it
    last_serial: int = 0
    #: the leader's fencing epoch (a reply below the highest the node has seen is ignored)
    epoch: int = 0
    #: the most reports the controller takes in one :class:`CommandReports` message (0: a
    #: controller older than them: one report per message)
    report_batch: int = 0


class Rejoin(_Msg, frozen=True):
    """The controller does not know this node instance (it restarted, or forgot): join again."""

    reason: str
    #: the sending leader's fencing epoch
    epoch: int = 0


class ErrorReply(_Msg, frozen=True):
    """Any request refused. ``code`` is machine-readable, ``error`` says what to do.

    Made by :func:`error_reply` from the exception, read by :func:`raise_for_error`, which
    raises the class ``kind`` names (by ``code`` when it names none known here).
    """

    code: str
    error: str
    #: for code ``retry``: ask again after this many seconds
    retry_after: float = 0.0
    #: for code ``group-refused`` of a collective: the group's current collective number
    #: (calling again at it is counted); 0 when it does not apply
    step: int = 0
    #: the name of the :mod:`corral.errors` class raised (the client raises the same one)
    kind: str = ""
    #: per-field errors (:class:`~corral.errors.InvalidArguments`)
    fields: dict[str, str] = msgspec.field(default_factory=dict)
    #: for code ``not-leader``: the leading controller's address ("" if none leads)
    leader: str = ""


class Ok(_Msg, frozen=True):
    """A request that returns nothing succeeded."""


# --- operator -> controller -----------------------------------------------------------------


class NodesRequest(_Msg, frozen=True):
    """Ask for the registry (``corral.ctl.nodes``)."""


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    """One node as the registry sees it."""

    name: str
    status: NodeStatus
    since: float
    last_seen: float
    joined_at: float
    labels: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    host: str = ""
    pid: int = 0
    version: str = ""
    slots: int = 0
    last_serial: int = 0
    #: commands addressed to it that it has not answered yet (it is behind when > 0)
    behind: int = 0
    #: ``cpu_percent``, ``mem_percent``, ``disk_percent``, ``load1`` from its last heartbeat
    stats: dict[str, float] | None = None


class NodesReply(_Msg, frozen=True):
    """The registry, ordered by name."""

    nodes: list[NodeView]
    controller: str = ""


class AuthEvent(_Msg, frozen=True):
    """An operator enrolled or revoked a node (``corral.ctl.auth``), for the audit log."""

    action: str
    name: str
    actor: str
    keys: tuple[str, ...] = ()
    host: str = ""
    pid: int = 0


class NodeEvent(_Msg, frozen=True):
    """A node changed status (``corral.events.node.<name>``), published once persisted."""

    node: str
    #: "" for a node the registry did not know before
    old: str
    new: NodeStatus
    at: float
    reason: str = ""


class AgentMessage(_Msg, frozen=True):
    """A message to an agent (``corral.agent.<name>``): its name, data and sender."""

    message: str
    data: Any = None
    sender: str = ""


class AgentReply(_Msg, frozen=True):
    """What an agent's handler returned."""

    data: Any = None


class AgentInfoRequest(_Msg, frozen=True):
    """Every agent, say what you are (``corral.agents.info``, scatter-gather)."""


class AgentInfo(_Msg, frozen=True):
    """One agent as it describes itself."""

    name: str
    host: str
    pid: int
    handlers: tuple[str, ...]
    started: float
    pool: bool = False
    handled: int = 0
    overflow: int = 0
    waiting: int = 0
    last_error: str = ""


class GroupJoin(_Msg, frozen=True):
    """A process joins group ``corral.group.<name>.join`` (answered when the group forms)."""

    member: str
    size: int
    run: str = ""
    rank: int | None = None
    startup_timeout: float = 50.0
    allow_startup_failures: bool = False
    host: str = ""
    pid: int = 0


class GroupFormed(_Msg, frozen=True):
    """The group formed: this member's rank, the size, and the group instance's id."""

    group_id: str
    rank: int
    size: int
    asked: int


class GroupBeat(_Msg, frozen=True):
    """A member is alive (``corral.group.<name>.beat``)."""

    member: str
    run: str = ""


class GroupArrive(_Msg, frozen=True):
    """A member reached collective ``seq`` (``corral.group.<name>.arrive``, request)."""

    member: str
    kind: str
    seq: int
    timeout: float
    run: str = ""


class GroupResume(_Msg, frozen=True):
    """A formed group's member re-announces itself to a coordinator that does not know it (a
    restarted or new controller; ``corral.group.<name>.resume``, request): its own rank only."""

    member: str
    group_id: str
    rank: int
    size: int
    asked: int
    seq: int  # the collective this member calls next (1 + the ones it completed)
    run: str = ""
    host: str = ""
    pid: int = 0


class GroupRound(_Msg, frozen=True):
    """A collective completed (or, with ``error``, timed out): who reached it, who was missing."""

    kind: str
    seq: int
    reached: tuple[int, ...]
    missing: tuple[int, ...]
    error: str = ""
    #: why each rank in ``missing`` was left out: ``dead``, ``departed``, ``out of step:
    #: called <kind> #<n>``, ``did not arrive``, ``reached, then died`` or ``reached, then
    #: departed`` (``reached`` holds only members alive when the round completed)
    left_out: dict[int, str] = msgspec.field(default_factory=dict)


class GroupLeave(_Msg, frozen=True):
    """A member is done (``corral.group.<name>.leave``)."""

    member: str
    run: str = ""


class GroupChunk(_Msg, frozen=True):
    """A piece of a collect or distribute value (values larger than a message are split)."""

    seq: int
    src: int
    index: int
    total: int
    data: bytes


class GroupInfoRequest(_Msg, frozen=True):
    """A member asks who is in its group (``corral.group.<name>.info``, request)."""

    member: str
    run: str = ""


class GroupRank(_Msg, frozen=True):
    """One rank of a formed group: where it runs and whether it is ``alive``, ``dead`` or
    ``left``."""

    rank: int
    host: str
    pid: int
    state: str


class GroupInfo(_Msg, frozen=True):
    """A formed group as the coordinator knows it (the reply to :class:`GroupInfoRequest`)."""

    name: str
    group_id: str
    size: int
    asked: int
    ranks: tuple[GroupRank, ...] = ()


class AgentsRequest(_Msg, frozen=True):
    """Ask the controller for the live agents (``corral.ctl.agents``)."""

    wait: float = 0.5


class AgentsReply(_Msg, frozen=True):
    """The live agents, as each described itself."""

    agents: list[AgentInfo]


class StatsRequest(_Msg, frozen=True):
    """Ask for the controller's counters (``corral.ctl.stats``)."""


class StatsReply(_Msg, frozen=True):
    """Counters: messages handled and rejected, by reason."""

    controller: str
    started: float
    counters: dict[str, int]


# --- commands (SEER) ------------------------------------------------------------------------


class CommandRequest(_Msg, frozen=True):
    """An operator sends a command (``corral.ctl.send``; EXECUTE on ``corral.ctl.execute``).

    ``kind`` is ``command`` (a handler registered on the node under ``name``), ``shell``
    (``args["cmd"]``), ``get`` / ``set`` (parameter ``name``, ``args["value"]``), ``put``
    (``data`` to the work-directory path ``name``), ``execute`` (``data`` is a Python file run
    as its own process with ``args["argv"]``) or a user's own message type.
    """

    targets: list[str]
    kind: str = "command"
    name: str = ""
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    data: bytes = b""
    timeout: float = 60.0
    #: seconds after which a node that has not received it skips it (None: the
    #: controller's ``retire_after`` setting)
    retire_after: float | None = None
    #: who the client says it is: recorded only as ``on_behalf_of``; the controller names
    #: the sender from the credential (the subject it was allowed to publish on)
    actor: str = ""
    #: a repeat with the same key (within ``idempotency_window``) gets the first answer
    idempotency_key: str = ""


class CommandAccepted(_Msg, frozen=True):
    """The controller recorded a command: its serial and the nodes it resolved to."""

    serial: int
    created: float
    nodes: list[str]
    unknown: list[str] = msgspec.field(default_factory=list)
    broadcast: bool = False


class NodeCommand(_Msg, frozen=True):
    """A command as a node receives it (in a :class:`LiveCommand`, or a catch-up answer),
    and as the command stream keeps it."""

    serial: int
    kind: str
    name: str = ""
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    data: bytes = b""
    timeout: float = 60.0
    created: float = 0.0
    retire_after: float = 120.0
    actor: str = ""
    #: sent once on ``corral.cmd.all``: every node receives it, and runs it if in ``only``
    #: (or, for ``*`` with no list, if it was known when the command was resolved)
    to_all: bool = False
    #: for ``to_all`` to a subset: the nodes it was resolved to, the only ones that run it
    only: tuple[str, ...] = ()
    #: for ``*``: nodes that had left when it was resolved (they do not run it if they return)
    skip: tuple[str, ...] = ()


class CommandReport(_Msg, frozen=True):
    """A node says where a command stands (``corral.in.<node>.out``; sent without NATS
    headers, its protocol version in ``proto``: see :func:`decode`)."""

    serial: int
    state: CommandState
    result: Any = None
    error: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    proto: str = PROTOCOL_VERSION


#: The most reports one :class:`CommandReports` may carry (a controller refuses more).
MAX_BATCHED_REPORTS = 256


class CommandReports(_Msg, frozen=True):
    """Several of a node's reports in one message (``corral.in.<node>.out``, beside single
    :class:`CommandReport` ones): what it ran in a burst, in the order it ran them.

    A node sends it only to a controller whose join reply allows it
    (:attr:`JoinReply.report_batch`), with at most that many reports; like a single report,
    it speaks only for the node the subject names (there is no node field to claim another).
    Sent without NATS headers, its protocol version in ``proto``.
    """

    reports: list[CommandReport]
    proto: str = PROTOCOL_VERSION


class _RawReports(msgspec.Struct, kw_only=True, frozen=True, tag="CommandReports"):
    """:class:`CommandReports` as a node builds it: reports it encoded already, as they are."""

    reports: list[msgspec.Raw]
    proto: str = PROTOCOL_VERSION


def encode_reports(encoded: Sequence[bytes]) -> bytes:
    """A :class:`CommandReports` message of reports encoded already (by :func:`encode`),
    without decoding them again: each is embedded as it is."""
    return _encoder.encode(_RawReports(reports=[msgspec.Raw(r) for r in encoded]))


class ReportAck(_Msg, frozen=True):
    """The controller has a node's final reports on these commands on disk
    (``corral.node.<node>.acks``; one message per node per interval, covering many)."""

    serial: int = 0
    #: every serial confirmed by this message (``serial`` alone when empty)
    serials: tuple[int, ...] = ()
    #: the publishing controller's fencing epoch (0: none; or in the header)
    epoch: int = 0
    proto: str = PROTOCOL_VERSION


class LiveCommand(_Msg, frozen=True):
    """A command delivered live by core NATS (``corral.live.cmd`` to every node, or
    ``corral.node.<node>.cmd`` for the body of a command to a few nodes).

    On the shared subject every serial appears once, in order, and names the one before it
    (``prev``), so a node sees a gap. A command to a few nodes appears there as a *mark*
    (``nodes`` named, no ``body``); its body goes to each target's own subject.
    """

    serial: int
    #: the serial published on the shared subject before this one (0: none known)
    prev: int = 0
    #: the publishing controller's fencing epoch (0: none)
    epoch: int = 0
    #: the encoded :class:`NodeCommand`; empty for a mark
    body: bytes = b""
    #: for a mark: the nodes the body goes to, on their own subjects
    nodes: tuple[str, ...] = ()
    #: commands every target of which has a final report on disk: their targets stop
    #: re-sending them (a :class:`ReportAck` to every node, riding along)
    settled: tuple[int, ...] = ()
    #: the protocol version: live commands go without NATS headers (see :func:`decode`)
    proto: str = PROTOCOL_VERSION


class CatchUp(_Msg, frozen=True):
    """A node asks for its commands with serials in ``(after, upto]`` that it missed
    (``corral.in.<node>.catchup``, request/reply)."""

    after: int
    upto: int


class CatchUpReply(_Msg, frozen=True):
    """The node's commands in ``(after, covered]`` (one page): ``covered`` below the asked
    ``upto`` means ask again from it."""

    covered: int
    #: the encoded :class:`NodeCommand` of each, in serial order
    commands: list[bytes] = msgspec.field(default_factory=list)


class OutcomeView(msgspec.Struct, frozen=True, kw_only=True):
    """One node's outcome of one command."""

    node: str
    state: CommandState
    at: float
    result: Any = None
    error: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""


class CommandView(_Msg, frozen=True):
    """A command and (in detail views) every target's outcome."""

    serial: int
    created: float
    actor: str
    kind: str
    name: str
    targets: list[str]
    nodes: list[str]
    unknown: list[str] = msgspec.field(default_factory=list)
    retire_after: float = 120.0
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    outcomes: list[OutcomeView] = msgspec.field(default_factory=list)


class CommandUpdate(_Msg, frozen=True):
    """Outcomes that changed (``corral.events.cmd.<serial>``), published once persisted."""

    serial: int
    outcomes: list[OutcomeView]


class CommandQuery(_Msg, frozen=True):
    """Ask for one command with every outcome (``corral.ctl.command``)."""

    serial: int


class CommandsQuery(_Msg, frozen=True):
    """Ask for recent commands, newest first (``corral.ctl.commands``), ``before`` a serial."""

    limit: int = 50
    before: int | None = None


class CommandsReply(_Msg, frozen=True):
    """Recent commands with per-state counts (no outcome details)."""

    commands: list[CommandView]


class Report(_Msg, frozen=True):
    """A node's data report on ``topic`` (``corral.in.<node>.report``, SEER REPORT)."""

    topic: str
    value: Any
    at: float = 0.0


class ReportEntry(msgspec.Struct, frozen=True, kw_only=True):
    """The latest value of one topic from one node."""

    node: str
    topic: str
    value: Any
    at: float


class ReportUpdate(_Msg, frozen=True):
    """Reports that changed since the last update, and the aggregates over them.

    Pushed to every sink node (``corral.node.<sink>.reports``) and to watchers
    (``corral.events.report.<topic>``) every update interval (SEER ``doUpdates``).
    """

    reports: list[ReportEntry]
    aggregates: dict[str, Any] = msgspec.field(default_factory=dict)


class ReportsQuery(_Msg, frozen=True):
    """Ask for the latest reports (``corral.ctl.reports``), optionally of one topic."""

    topic: str = ""


class StreamControl(_Msg, frozen=True):
    """A subscriber opens, credits or closes a node's data stream (``corral.node.<n>.stream``).

    ``credit`` is how many more items the subscriber can take (flow control): the node sends
    no more than that and keeps at most its buffer of the rest, dropping the oldest.
    """

    action: str
    stream: str
    sid: str
    credit: int = 0


class StreamItems(_Msg, frozen=True):
    """Items of a node's stream for one subscriber (``corral.in.<n>.stream.<stream>.<sid>``).

    ``seq`` is the number of the first item; ``dropped`` how many items this subscriber has
    lost so far because it was slower than the node (its buffer was full).
    """

    seq: int
    items: list[Any]
    dropped: int = 0
    closed: bool = False


# --- tasks: node workers <-> the controller's scheduler (issue #4) ---------------------------


class TaskRun(msgspec.Struct, frozen=True, array_like=True):
    """One task instance given to a node under ``lease`` (``args`` are msgpack bytes)."""

    id: int
    lease: str
    key: str
    args: bytes
    attempt: int = 1


class TaskAssign(_Msg, frozen=True):
    """Controller -> node (``corral.node.<node>.tasks``): run these."""

    runs: list[TaskRun]


class TaskStop(_Msg, frozen=True):
    """Controller -> node: ask the task under ``lease`` to stop; ``force``: kill its worker."""

    lease: str
    force: bool = False


class TaskKillWorker(_Msg, frozen=True):
    """Controller -> node: kill the worker process of ``slot`` (an operator's
    ``kill_worker``); the task it runs fails as with a crashed worker, the slot restarts."""

    slot: int
    actor: str = ""


class TaskAck(_Msg, frozen=True):
    """Controller -> node: these results are on disk; stop re-sending them."""

    leases: list[str]


class TaskProgress(msgspec.Struct, frozen=True, array_like=True):
    """A running task's progress (percent, 0-100) and message."""

    lease: str
    percent: float
    message: str = ""
    worker: int = -1


class TaskStarted(msgspec.Struct, frozen=True, array_like=True):
    """A worker of the node took up the run under ``lease`` ``ago`` seconds before the report
    was sent (it was ``assigned``, waiting in the worker's pipe, until then)."""

    lease: str
    worker: int = -1
    ago: float = 0.0


class TaskResult(msgspec.Struct, frozen=True, array_like=True):
    """A task ended: ``outcome`` is ``complete``, ``failed`` or ``stopped``."""

    lease: str
    outcome: TaskOutcome
    result: bytes | None = None
    error: str = ""
    traceback: str = ""
    worker: int = -1
    #: what the task printed (stdout, stderr) and ``ctx.log``-ged, bounded by the node
    logs: str = ""
    #: seconds the run took in its worker (-1: not measured); the adaptive prefetch uses it
    seconds: float = -1.0


class TaskReport(_Msg, frozen=True):
    """Node -> controller (``corral.in.<node>.tasks``): progress and results, batched.

    Results are re-sent until a :class:`TaskAck` names them (at-least-once)."""

    progress: list[TaskProgress] = msgspec.field(default_factory=list)
    results: list[TaskResult] = msgspec.field(default_factory=list)
    #: runs a worker started since the last report (an older node sends none)
    started: list[TaskStarted] = msgspec.field(default_factory=list)


class TaskParam(msgspec.Struct, frozen=True, kw_only=True):
    """One parameter of a task function, as its node describes it (``TaskHello.signatures``).

    ``kind`` is :class:`inspect.Parameter`'s kind in lower case (``positional_or_keyword``,
    ``keyword_only``, ``positional_only``, ``var_positional``, ``var_keyword``); ``required``
    says it has no default; ``type`` is the JSON schema msgspec generates for its type hint,
    ``None`` when it has none msgspec knows (its value is then not checked); ``hint`` is the
    hint as written, for messages.
    """

    name: str
    kind: str = "positional_or_keyword"
    required: bool = False
    type: dict[str, Any] | None = None
    hint: str = ""


class TaskSignature(msgspec.Struct, frozen=True, kw_only=True):
    """The parameters of a task function a caller passes (the worker's ``ctx`` left out)."""

    params: list[TaskParam] = msgspec.field(default_factory=list)


class TaskHello(_Msg, frozen=True):
    """Node -> controller (``corral.in.<node>.workers``, request), after every join: the task
    keys it can run, its slots and labels, the leases it still holds and unacked results."""

    instance: str
    keys: list[str]
    slots: int
    labels: list[str] = msgspec.field(default_factory=list)
    running: list[str] = msgspec.field(default_factory=list)
    results: list[TaskResult] = msgspec.field(default_factory=list)
    #: the keys among ``keys`` that are subtasks (hidden by ``list_tasks(toplevel=True)``)
    subtasks: list[str] = msgspec.field(default_factory=list)
    #: each key's parameters, checked by the controller when a task is queued; a key not
    #: here (an older node) is not checked
    signatures: dict[str, TaskSignature] = msgspec.field(default_factory=dict)


class TaskMap(_Msg, frozen=True):
    """Node -> controller (``corral.in.<node>.map``, request): the task under ``lease`` maps
    subtask ``key`` over ``args`` (one msgpack mapping per item).

    ``seq`` numbers the maps of one run (1, 2 ...; 0 from a node that never asks twice). The
    node asks again until the map's answer comes (after a controller restart or takeover too):
    a repeat of the same ``lease`` and ``seq`` names the same children, never new ones."""

    lease: str
    key: str
    args: list[bytes]
    seq: int = 0


class TaskMapped(_Msg, frozen=True):
    """Controller -> node: the map of the task under ``lease`` is done: every result in item
    order, or (``ok`` false) the first failed item's error. ``seq`` is the map's (see
    :class:`TaskMap`): an answer sent twice, or late, is recognised and dropped."""

    lease: str
    ok: bool
    results: list[bytes | None] = msgspec.field(default_factory=list)
    error: str = ""
    seq: int = 0


class TaskResync(_Msg, frozen=True):
    """Controller -> node: say hello again (the node came back UP without joining, after
    the controller had taken its leases away)."""


#: What a node receives on its tasks subject.
NodeTaskMessage = TaskAssign | TaskStop | TaskAck | TaskMapped | TaskResync | TaskKillWorker


# --- encoding -------------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


# --- guardians (corral.guardian.<name>.<verb>; views in the corral_guardians KV bucket) ---------


class GuardianView(_Msg, frozen=True):
    """What a guardian publishes (its key in the KV bucket) and answers every request with."""

    name: str
    instance: str
    #: bumped on every change; a heartbeat republishes the same seq with a new ``beat``
    seq: int
    state: str
    request: str
    #: a :class:`~corral.states.GuardianMode`; "" in a view a reader made up for a guardian
    #: it never heard from
    mode: str
    status: GuardianStatus
    phase: str = ""
    manager: str = ""
    path: tuple[str, ...] = ()
    arrived: bool = False
    stalled: bool = False
    paused: bool = False
    notifications: tuple[str, ...] = ()
    #: the traceback of user code that raised (status ERROR)
    error: str = ""
    #: why the last reload failed (the previous code keeps running)
    load_error: str = ""
    system: str = ""
    host: str = ""
    pid: int = 0
    #: wall-clock time of this publication (heartbeats refresh it)
    beat: float = 0.0
    #: False in the last view a guardian publishes when it stops
    alive: bool = True
    #: the system module's ``nominal`` state ("" if it names none)
    nominal: str = ""
    #: LIGO's OK: executing, AUTO or MANAGED, REQUEST == STATE == NOMINAL, done, no error,
    #: connected (a reader turns it False when the view is stale: see ``as_seen``)
    ok: bool = False
    #: the last states entered, oldest first, and how many states were entered in all
    trail: tuple[str, ...] = ()
    entered: int = 0
    #: the last lines state code logged with ``log()``
    log: tuple[str, ...] = ()


class GuardianRequest(_Msg, frozen=True):
    """Walk to ``state`` (``corral.guardian.<name>.request``)."""

    state: str
    by: str
    manager: bool = False


class GuardianMode(_Msg, frozen=True):
    """Change the mode (``corral.guardian.<name>.mode``); MANAGED records ``by``."""

    mode: GuardianModeName
    by: str
    manager: bool = False


class GuardianRevive(_Msg, frozen=True):
    """Re-request the last request (``corral.guardian.<name>.revive``)."""

    by: str
    manager: bool = False


class GuardianPause(_Msg, frozen=True):
    """Pause or resume (``corral.guardian.<name>.pause``)."""

    paused: bool
    by: str


class GuardianReload(_Msg, frozen=True):
    """Load the system module again (``corral.guardian.<name>.reload``)."""

    by: str


class GuardianViewRequest(_Msg, frozen=True):
    """Ask for the current view (``corral.guardian.<name>.view``)."""


class GuardianGraphRequest(_Msg, frozen=True):
    """Ask for the state graph (``corral.guardian.<name>.graph``)."""


class GuardianState(msgspec.Struct, frozen=True, kw_only=True):
    """One state of a guardian's graph."""

    name: str
    goto: bool = False
    request: bool = True
    index: int | None = None


class GuardianGraph(_Msg, frozen=True):
    """A guardian's states and edges, with its view (to highlight state and path)."""

    states: tuple[GuardianState, ...]
    edges: tuple[tuple[str, str], ...]
    view: GuardianView


def encode(msg: msgspec.Struct) -> bytes:
    """Encode a message to msgpack bytes (send them with :data:`HEADERS`)."""
    return _encoder.encode(msg)


_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(kind: Any) -> msgspec.msgpack.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    return decoder


def check_version(headers: Mapping[str, str] | None, payload: str | None = None) -> None:
    """Refuse a message without the protocol version or with another major version.

    Args:
        headers: the NATS headers (their :data:`PROTO_HEADER`).
        payload: the version the payload carries (its ``proto`` field), for the messages
            sent without headers on the hot paths; the header wins when both are there.

    Raises:
        VersionMismatch: naming both versions.
    """
    theirs = headers.get(PROTO_HEADER) if headers else None
    theirs = theirs or payload or None
    if theirs is None:
        raise VersionMismatch(
            f"message has no {PROTO_HEADER} header (ours is {PROTOCOL_VERSION}): "
            "it was not sent by corral, or by a corral older than 0.1"
        )
    if theirs.split(".", 1)[0] != PROTOCOL_VERSION.split(".", 1)[0]:
        raise VersionMismatch(
            f"peer speaks corral protocol {theirs}, this process speaks {PROTOCOL_VERSION}: "
            "upgrade the older side so both share a major version"
        )


def decode(
    data: bytes,
    kind: type[T],
    headers: Mapping[str, str] | None = None,
    *,
    limit: int | None = None,
    check_headers: bool = True,
) -> T:
    """Decode ``data`` as a ``kind`` message, validating version, size and shape.

    Args:
        data: the payload.
        kind: the expected message type (or a union of them).
        headers: the message headers (carrying the protocol version, unless the payload
            does: a message with a ``proto`` field may come without headers).
        limit: the largest payload accepted, in bytes; ``None`` for no limit.
        check_headers: verify the protocol header (off only for payloads with no NATS headers).

    Returns:
        The decoded message.

    Raises:
        OversizedMessage: the payload is larger than ``limit``.
        VersionMismatch: the version (header, else payload) is missing or names another
            major version.
        MalformedMessage: the payload does not decode to ``kind``.
    """
    if limit is not None and len(data) > limit:
        raise OversizedMessage(
            f"message of {len(data)} bytes exceeds the {limit}-byte limit for this subject: "
            "send less, or raise max_message_bytes in the controller's configuration"
        )
    in_header = headers is not None and PROTO_HEADER in headers
    if check_headers and in_header:
        check_version(headers)
    try:
        result: T = _decoder(kind).decode(data)
    except msgspec.DecodeError as exc:
        name = getattr(kind, "__name__", str(kind))
        raise MalformedMessage(f"malformed {name} message: {exc}{_enum_hint(kind, exc)}") from None
    if check_headers and not in_header:  # sent without headers: the payload says its version
        check_version(None, getattr(result, "proto", None))
    return result


def _enum_hint(kind: Any, exc: msgspec.DecodeError) -> str:
    """For a state that does not exist (``Invalid enum value 'x' - at `$.a[0].b```): the
    ones that do, found by walking ``kind``'s type along the error's path."""
    text = str(exc)
    if not text.startswith("Invalid enum value") or " - at `$" not in text:
        return ""
    path = text.rsplit(" - at `$", 1)[1].rstrip("`")
    info: Any = msgspec.inspect.type_info(kind)
    for token in re.findall(r"\.(\w+)|\[(\d+)\]", path):
        if isinstance(info, msgspec.inspect.UnionType):
            info = next((t for t in info.types if isinstance(t, msgspec.inspect.StructType)), info)
        if isinstance(info, msgspec.inspect.StructType):
            fields = info.fields
            found = [f for f in fields if f.encode_name == token[0]] if token[0] else []
            if token[1] and info.array_like and int(token[1]) < len(fields):
                found = [fields[int(token[1])]]
            info = found[0].type if found else None
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
            info = info.item_type
        else:
            return ""
    if not isinstance(info, msgspec.inspect.EnumType):
        return ""
    return f" (use one of: {', '.join(str(v.value) for v in info.cls)})"


def decode_reply(data: bytes, kind: type[T], headers: Mapping[str, str] | None = None) -> T:
    """Decode a reply that is either ``kind`` or an :class:`ErrorReply`, raising the latter.

    Raises:
        Refused: the peer answered with an error (a subclass where the code is known).
        ProtocolError: the reply is malformed or of another version.
    """
    union: Any = kind | ErrorReply
    msg: Any = decode(data, union, headers)
    if isinstance(msg, ErrorReply):
        raise_for_error(msg)
    return msg  # type: ignore[no-any-return]


def error_reply(exc: BaseException) -> ErrorReply:
    """The bus reply for ``exc`` (see :func:`corral.errors.to_wire`)."""
    w = to_wire(exc)
    return ErrorReply(
        code=w.reply_code,
        error=w.error,
        retry_after=w.retry_after,
        step=w.step,
        kind=w.kind,
        fields=w.fields,
        leader=w.leader,
    )


def raise_for_error(reply: ErrorReply) -> NoReturn:
    """Raise the corral error that an :class:`ErrorReply` stands for: the class its ``kind``
    names, else the one its ``code`` stands for (:class:`~corral.errors.Refused` if none)."""
    raise from_wire(
        reply.kind,
        reply.error,
        code=reply.code,
        fields=reply.fields,
        retry_after=reply.retry_after,
        step=reply.step,
        leader=reply.leader,
    )
