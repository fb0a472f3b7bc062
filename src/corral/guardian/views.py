"""What a guardian shows the world: its view and its graph as wire messages."""

from __future__ import annotations

import os
import socket
import time

import msgspec

from corral import wire
from corral.guardian.core import Automaton
from corral.guardian.graph import Graph

__all__ = ["as_seen", "graph_of", "view_of"]

_HOST = socket.gethostname()


def view_of(core: Automaton, instance: str, system: str, load_error: str) -> wire.GuardianView:
    """The view of ``core`` now (call it under the lock that guards ``core``).

    Args:
        core: the guardian's automaton.
        instance: this run of the guardian (a restart gets a new one).
        system: the path of its system module.
        load_error: why the last reload failed ("" if it did not).

    Returns:
        The view, stamped with this host, process and time.
    """
    return wire.GuardianView(
        name=core.name,
        instance=instance,
        seq=core.seq,
        state=core.state,
        request=core.request,
        mode=core.mode,
        status=core.status,
        phase=str(core.phase),
        manager=core.manager,
        path=tuple(core.path),
        arrived=core.arrived,
        stalled=core.stalled,
        paused=core.paused,
        notifications=core.notifications,
        error=core.error,
        load_error=load_error,
        system=system,
        host=_HOST,
        pid=os.getpid(),
        beat=time.time(),
        nominal=core.nominal,
        ok=core.ok,
        trail=tuple(core.trail),
        entered=core.entered,
        log=tuple(core.log_lines),
    )


def as_seen(
    view: wire.GuardianView, stale_after: float, now: float | None = None
) -> wire.GuardianView:
    """``view`` as a reader should show it: CONNECTION_ERROR (and not OK) when the guardian
    said goodbye or its last heartbeat is older than ``stale_after`` seconds.

    Every client uses this one rule (:meth:`GuardianClient.list`, the CLI, the dashboard).

    Args:
        view: a view read from the bucket or from the guardian.
        stale_after: seconds without a heartbeat before it counts as dead (the
            configuration's ``down_after``).
        now: the wall-clock time to judge at (default: now).

    Returns:
        ``view`` itself if it is live, else a copy with status CONNECTION_ERROR and ok False.
    """
    now = time.time() if now is None else now
    if view.alive and now - view.beat <= stale_after:
        return view
    return msgspec.structs.replace(view, status="CONNECTION_ERROR", ok=False)


def graph_of(graph: Graph, view: wire.GuardianView) -> wire.GuardianGraph:
    """``graph`` as a wire message, with the view that says where the guardian is.

    Args:
        graph: the states and edges.
        view: the guardian's current view.

    Returns:
        The message.
    """
    states = tuple(
        wire.GuardianState(name=s.name, goto=s.goto, request=s.request, index=s.index)
        for s in graph.states
    )
    return wire.GuardianGraph(states=states, edges=graph.edges, view=view)
