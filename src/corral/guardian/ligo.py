"""LIGO Guardian's ``guardian`` module on corral: a seed system module runs unchanged.

A system module written for LIGO Guardian imports from ``guardian``::

    from guardian import GuardState, GuardStateDecorator, NodeManager, log, notify

    request = 'ALIGNED'
    nominal = 'ALIGNED'
    nodes = NodeManager(['SUS_MC1', 'SUS_MC2'])

corral ships a top-level ``guardian`` package that re-exports this module (as
:mod:`corral.compat.guardian` does), and
``corral guardian run`` also puts this module in ``sys.modules['guardian']`` before loading a
system module (so the import works even where another ``guardian`` is installed). The module's
``request``, ``nominal`` and ``edges`` are read by the loader (see ``docs/guardians.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from corral.guardian.manager import Node, NodeManager
from corral.guardian.state import GuardState, log, notify

__all__ = ["GuardState", "GuardStateDecorator", "Node", "NodeManager", "log", "notify"]


class GuardStateDecorator:
    """LIGO's decorator class for a state's ``main``/``run``: subclass it, override
    :meth:`pre_exec` (and :meth:`post_exec`), and decorate methods with the subclass::

        class assert_dof_locked(GuardStateDecorator):
            def pre_exec(self):
                if not locked():
                    return 'DOWN'        # a jump: the method does not run

        class LOCKED(GuardState):
            @assert_dof_locked
            def run(self):
                return True

    While it runs, ``self.state`` is the state object whose method is decorated.

    Args:
        func: the decorated method.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.state: GuardState | None = None
        functools.update_wrapper(self, func)

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self.__call__, cast(GuardState, obj))

    def __call__(self, state: GuardState, *args: Any, **kwargs: Any) -> Any:
        self.state = state
        jump = self.pre_exec()
        if isinstance(jump, str) and jump:
            return jump
        result = self.func(state, *args, **kwargs)
        after = self.post_exec()
        return after if isinstance(after, str) and after else result

    def pre_exec(self) -> Any:
        """Run before the method; return a state name to jump there instead of running it.

        Returns:
            ``None`` to run the method, or a state name (a jump).
        """
        return None

    def post_exec(self) -> Any:
        """Run after the method; return a state name to jump there instead of its result.

        Returns:
            ``None`` to keep the method's result, or a state name (a jump).
        """
        return None
