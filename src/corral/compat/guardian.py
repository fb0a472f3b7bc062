"""LIGO Guardian's ``guardian`` module on corral, under its compatibility name.

The module itself is :mod:`corral.guardian.ligo` (inside the guardian package, so that the
loader can alias it as ``guardian`` without importing upwards); this name re-exports it for
the top-level ``guardian`` package and for code that imports ``corral.compat.guardian``.
"""

from corral.guardian.ligo import GuardState as GuardState
from corral.guardian.ligo import GuardStateDecorator as GuardStateDecorator
from corral.guardian.ligo import Node as Node
from corral.guardian.ligo import NodeManager as NodeManager
from corral.guardian.ligo import log as log
from corral.guardian.ligo import notify as notify

__all__ = ["GuardState", "GuardStateDecorator", "Node", "NodeManager", "log", "notify"]
