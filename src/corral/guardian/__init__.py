"""Guardians: state-machine automata driven by requests, and managers of guardians.

A system module written with :class:`GuardState` and ``edges`` runs as a named guardian
(``corral guardian run SYSTEM.py --name SUS_MC1`` or :class:`Guardian`); requests walk it along
the shortest path of edges; a :class:`NodeManager` in one guardian's module drives others. See
``docs/guardians.md``.
"""

from corral.guardian.client import GuardianClient as GuardianClient
from corral.guardian.core import Mode as Mode
from corral.guardian.core import Status as Status
from corral.guardian.manager import Node as Node
from corral.guardian.manager import NodeManager as NodeManager
from corral.guardian.runtime import Guardian as Guardian
from corral.guardian.state import GuardState as GuardState
from corral.guardian.state import log as log
from corral.guardian.state import notify as notify

__all__ = [
    "GuardState",
    "Guardian",
    "GuardianClient",
    "Mode",
    "Node",
    "NodeManager",
    "Status",
    "log",
    "notify",
]
