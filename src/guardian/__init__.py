"""``guardian``: LIGO Guardian's import name, shipped by corral (see
:mod:`corral.compat.guardian`), so a seed system module's ``from guardian import ...`` works."""

from corral.compat.guardian import GuardState as GuardState
from corral.compat.guardian import GuardStateDecorator as GuardStateDecorator
from corral.compat.guardian import Node as Node
from corral.compat.guardian import NodeManager as NodeManager
from corral.compat.guardian import log as log
from corral.compat.guardian import notify as notify

__all__ = ["GuardState", "GuardStateDecorator", "Node", "NodeManager", "log", "notify"]
