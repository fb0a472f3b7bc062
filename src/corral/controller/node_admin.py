"""Fleet hygiene calls of the controller API: kill a worker, forget a node (Pydra's
``kill_worker`` and ``node_delete``).

Killing a worker is a message to the node (``TaskKillWorker``): the node kills that slot's
process, reports the task it ran as failed (as any crashed worker's) and
starts the slot again. Forgetting a node removes it from the registry and the store and
revokes its credentials, so it cannot come back without a new ``corral enroll``; a node that
is UP is refused: stop it first.

A node that left on purpose (LEFT) is forgotten by the controller itself once it has been
gone ``left_expiry`` seconds (:func:`expire_left_loop`): its record goes from the registry
and the store and its command consumer is deleted, audited as ``system``. Its credentials
stay valid: it stopped cleanly, and may come back (it joins as a new node).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from corral import api_models as m
from corral import subjects, wire
from corral.core.registry import NodeStatus
from corral.errors import Conflict, CorralError, NotFound, RemoteError, UsageError
from corral.records import AuditEntry
from corral.security import Authority

if TYPE_CHECKING:
    from corral.bus import NATS
    from corral.config import Config
    from corral.core.registry import Registry
    from corral.core.scheduler import Scheduler
    from corral.store import Store

__all__ = ["delete_node", "expire_left", "expire_left_loop", "kill_worker"]

log = logging.getLogger("corral.api")


async def kill_worker(
    registry: Registry, core: Scheduler, nc: NATS, req: m.KillWorker, actor: str
) -> m.KilledWorker:
    """Ask node ``req.node`` to kill the worker process of slot ``req.slot``.

    Args:
        registry: the controller's node registry.
        core: the task scheduler (which node runs which task in which slot).
        nc: the controller's bus connection.
        req: the node and slot.
        actor: who asks (goes to the node's log and the failed task's error).

    Returns:
        The slot and the task it was running when asked (None if idle).

    Raises:
        NotFound: no such node.
        Conflict: the node is not UP or runs no task workers.
        RemoteError: the node has no such slot.
    """
    record = registry.nodes.get(req.node)
    if record is None:
        raise NotFound(f"no node named {req.node!r}", 404)
    workers = core.nodes.get(req.node)
    if record.status != NodeStatus.UP or workers is None:
        raise Conflict(
            f"node {req.node!r} is {record.status} or runs no task workers: "
            "there is no worker process to kill"
        )
    if not 0 <= req.slot < workers.slots:
        raise RemoteError(
            f"node {req.node!r} has worker slots 0..{workers.slots - 1}, not {req.slot}", 400
        )
    running = [
        core.active[i]
        for i in workers.leases.values()
        if i in core.active and core.active[i].worker == req.slot
    ]
    kill = wire.TaskKillWorker(slot=req.slot, actor=actor)
    await nc.publish(subjects.node_tasks(req.node), wire.encode(kill), headers=wire.HEADERS)
    log.warning("worker kill sent", extra={"node": req.node, "slot": req.slot, "actor": actor})
    task = running[0] if running else None
    return m.KilledWorker(
        node=req.node,
        slot=req.slot,
        task=task.id if task else None,
        key=task.key if task else "",
    )


async def delete_node(
    registry: Registry, store: Store, config: Config, req: m.NodeDelete
) -> m.NodeDeleted:
    """Forget node ``req.id``: registry, store, and its credentials revoked.

    Args:
        registry: the controller's node registry.
        store: the controller's store.
        config: where the authority lives (``data_path``) and how to reach the bus.
        req: the node's name.

    Returns:
        The node's last status, how many credentials were revoked now, and a note when the
        credentials could not be revoked from this host.

    Raises:
        NotFound: no such node.
        Conflict: the node is UP (stop it, or wait until it is DOWN, first).
    """
    name = req.id
    record = registry.nodes.get(name)
    if record is None:
        raise NotFound(f"no node named {name!r}; `corral nodes` lists them", 404)
    if record.status == NodeStatus.UP:
        raise Conflict(
            f"node {name!r} is UP: stop it (`corral stop` on its host) or revoke it "
            f"(`corral revoke {name}`) first, then forget it"
        )
    status = str(record.status)
    registry.forget(name)
    await store.delete_node(name)
    revoked, note = 0, ""
    if Authority.exists(config.data_path):
        authority = Authority.load(config.data_path)
        try:
            revoked = len(authority.revoke(name))
        except UsageError:
            note = "it was never enrolled with this authority: no credential to revoke"
        else:
            authority.write_server_fragment()
            if revoked and not await _push(config, authority):
                note = "the bus did not take the new account JWT: revoked at its next start"
    else:
        note = (
            "the authority is not on the controller's host: run `corral revoke "
            f"{name}` there to revoke its credentials"
        )
    return m.NodeDeleted(name=name, status=status, revoked=revoked, note=note)


async def _push(config: Config, authority: Authority) -> bool:
    """Push the re-signed account JWT, so the server closes revoked connections now."""
    from corral import bus

    try:
        nc = await bus.connect(
            config, "system", creds=authority.directory / "system.creds", name="corral-forget"
        )
    except CorralError:
        return False
    try:
        reply = await nc.request(
            "$SYS.REQ.CLAIMS.UPDATE", authority.account_jwt().encode(), timeout=5
        )
        return b'"code":200' in reply.data
    except Exception:  # the push is best effort: the fragment on disk is the record
        return False
    finally:
        await nc.close()


async def expire_left(
    registry: Registry,
    store: Store | None,
    config: Config,
    now: float,
    audit: Callable[[AuditEntry], None],
) -> list[str]:
    """Forget every node LEFT for longer than ``left_expiry`` (0: never), audited as
    ``system``. A node whose store delete fails is kept, and tried again next time.

    Args:
        registry: the node registry.
        store: the store (its node rows are deleted).
        config: ``left_expiry``.
        now: the controller's clock.
        audit: queues an audit entry for the controller's next group commit.

    Returns:
        The names forgotten.
    """
    after = config.left_expiry
    if after <= 0:
        return []
    gone = []
    for name in registry.left_before(now - after):
        record = registry.forget(name)
        assert record is not None
        try:
            if store is not None:
                await store.delete_node(name)
        except CorralError as exc:
            log.warning("cannot forget a node that left: %s", exc, extra={"node": name})
            registry.nodes.setdefault(name, record)  # tried again next time
            continue
        detail = {"left_at": record.since, "left_expiry": after}
        audit(AuditEntry(now, "system", "node_expire", name, detail, role="system"))
        log.info("node forgotten: left %.0fs ago", now - record.since, extra={"node": name})
        gone.append(name)
    return gone


async def expire_left_loop(forget: Callable[[], Awaitable[list[str]]], period: float) -> None:
    """Call ``forget`` (:func:`expire_left` with the controller's parts) every ``period``
    seconds, forever; a failure is logged, never fatal."""
    while True:
        await asyncio.sleep(period)
        try:
            await forget()
        except Exception:  # hygiene must never take the controller down
            log.exception("expiring nodes that left failed")
