"""What a guardian shows the world: its view and its graph as wire messages."""

from __future__ import annotations

import os
import socket
import time

from corral import wire
from corral.guardian.core import Automaton
from corral.guardian.graph import Graph

__all__ = ["graph_of", "view_of"]

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
        mode=str(core.mode),
        status=str(core.status),
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
    )


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
