"""Task runs on the bus: how large a task's arguments may be, and runs cut to fit.

A node gets its runs in ``TaskAssign`` messages; each must fit the bus's ``max_payload``
(the server's, learned when the connection opened), headers included. A task's arguments
are refused at queue time when one run alone would not fit (:func:`check_sizes`), and a
node's runs are cut into as many messages as they need (:func:`batches`). Sizes here are
generous estimates: a message is never larger than its estimate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from corral import subjects, wire
from corral.core.taskstate import TaskInstance
from corral.errors import BusUnavailable, OversizedMessage

__all__ = ["batches", "check_sizes", "max_payload", "publish_runs"]

#: nats-py's max_payload before the server says otherwise
_DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: room for the NATS header block (``NATS/1.0``, the protocol header)
_HEADER_ROOM = 64 + sum(len(k) + len(v) + 4 for k, v in wire.HEADERS.items())
#: a TaskAssign's own bytes around its runs (tag, field name, array header)
_ENVELOPE = 64


def _run_size(key: str, args: bytes, lease: str = "") -> int:
    """Bytes one run takes in a TaskAssign, generously (the lease may grow to 64 chars)."""
    return len(args) + len(key) + max(len(lease), 64) + 48


def max_payload(nc: Any) -> int:
    """Largest message body ``nc`` (a NATS connection, or None) carries, less its headers."""
    size = nc.max_payload if nc is not None else _DEFAULT_MAX_PAYLOAD
    return int(size) - _HEADER_ROOM


def check_sizes(nc: Any, key: str, args: Sequence[bytes]) -> None:
    """Refuse arguments whose run message would not fit on the bus.

    Args:
        nc: The controller's NATS connection (its ``max_payload``).
        key: The task's key.
        args: The msgpack-encoded argument mappings.

    Raises:
        OversizedMessage: naming the first such mapping, its size and the limit.
    """
    overhead = _run_size(key, b"") + _ENVELOPE
    limit = max_payload(nc) - overhead
    for n, encoded in enumerate(args):
        if len(encoded) > limit:
            which = f"argument mapping #{n}" if len(args) > 1 else "the arguments"
            raise OversizedMessage(
                f"task {key!r}: {which} encode to {len(encoded)} bytes; a task's arguments "
                f"may be at most {limit} bytes (the bus's max_payload "
                f"{limit + overhead + _HEADER_ROOM} less the message's own fields). Nothing "
                "was queued: pass a path or a URL to large data instead of the data itself"
            )


def batches(nc: Any, insts: list[TaskInstance]) -> Iterator[list[TaskInstance]]:
    """Cut one node's runs into messages the bus can carry (an oversized run alone)."""
    budget = max_payload(nc) - _ENVELOPE
    batch: list[TaskInstance] = []
    size = 0
    for inst in insts:
        one = _run_size(inst.key, inst.args, inst.lease)
        if batch and size + one > budget:
            yield batch
            batch, size = [], 0
        batch.append(inst)
        size += one
    if batch:
        yield batch


async def publish_runs(nc: Any, node: str, batch: list[TaskInstance]) -> None:
    """Put one message of runs for ``node`` on the bus.

    Raises:
        BusUnavailable: there is no connection.
        OversizedMessage: the message is larger than the bus carries.
        Exception: whatever nats-py raises (connection closed, buffer full).
    """
    if nc is None:
        raise BusUnavailable("not connected to the bus")
    runs = [wire.TaskRun(i.id, i.lease, i.key, i.args, i.attempts) for i in batch]
    message = wire.encode(wire.TaskAssign(runs=runs))
    if len(message) > max_payload(nc):
        raise OversizedMessage(
            f"its run message of {len(message)} bytes exceeds the bus's max_payload "
            f"({max_payload(nc) + _HEADER_ROOM})"
        )
    await nc.publish(subjects.node_tasks(node), message, headers=wire.HEADERS)
