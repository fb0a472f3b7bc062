"""Loading a guardian system module from a file, and loading it again.

A system module defines :class:`~corral.guardian.GuardState` subclasses (each one a state,
named by its class name; a name starting with ``_`` is a shared base class, not a state) and
``edges``, a list of ``(from, to)`` pairs. Optional module
attributes: ``initial`` (the state to start in: default ``INIT`` if defined, else the first
``goto`` state, else the first state), ``request`` (the first request: default ``initial``),
``nominal`` (the state it should normally be in, LIGO's NOMINAL: OK needs REQUEST == STATE ==
NOMINAL).

Every load executes the file as a fresh module, so a reload sees the changed code; a load that
fails raises :class:`~corral.errors.SystemLoadError` with the traceback and changes nothing.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from corral.errors import SystemLoadError, UsageError
from corral.guardian.graph import Graph, StateInfo
from corral.guardian.state import GuardState

__all__ = ["System", "load_system"]

_counter = itertools.count(1)


@dataclass(frozen=True)
class System:
    """A loaded system: its module, state classes, graph, and starting points."""

    path: Path
    module: ModuleType
    classes: dict[str, type[GuardState]]
    graph: Graph
    initial: str
    request: str
    nominal: str = ""

    def managers(self) -> list[Any]:
        """Every :class:`~corral.guardian.NodeManager` the module created."""
        from corral.guardian.manager import NodeManager

        return [v for v in vars(self.module).values() if isinstance(v, NodeManager)]


def _state_classes(module: ModuleType) -> dict[str, type[GuardState]]:
    found: dict[str, type[GuardState]] = {}
    for name, value in vars(module).items():
        if (
            isinstance(value, type)
            and issubclass(value, GuardState)
            and value is not GuardState
            and name == value.__name__
            and not name.startswith("_")  # a shared base class, not a state
        ):
            found[name] = value
    return found


def _initial(module: ModuleType, graph: Graph) -> str:
    initial = getattr(module, "initial", None)
    if isinstance(initial, str):
        return initial
    if "INIT" in graph:
        return "INIT"
    gotos = [s.name for s in graph.states if s.goto]
    return gotos[0] if gotos else graph.names[0]


def _provide_guardian_module() -> None:
    """Make ``import guardian`` (LIGO's name) give :mod:`corral.guardian.ligo`, so a seed
    system module's ``from guardian import GuardState, NodeManager`` works unchanged."""
    from corral.guardian import ligo as guardian

    current = sys.modules.get("guardian")
    if current is None or getattr(current, "GuardState", None) is not guardian.GuardState:
        sys.modules["guardian"] = guardian  # none, or another project's `guardian`


def load_system(path: str | Path) -> System:
    """Execute the system module at ``path`` and check it.

    Args:
        path: a Python file defining GuardState subclasses and ``edges``.

    Returns:
        The loaded system.

    Raises:
        SystemLoadError: the file is missing, fails to import (the traceback is in the
            message), or defines no states, bad edges, or an unknown initial state.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SystemLoadError(f"guardian system {path} not found: give the path of a .py file")
    name = f"corral_guardian_system_{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemLoadError(f"{path} cannot be loaded as a Python module (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    _provide_guardian_module()
    # Registered while it executes (dataclasses and pickling look modules up by name).
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # user code: anything at all, SystemExit included
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        text = "".join(traceback.format_exception(exc)).rstrip()
        raise SystemLoadError(f"guardian system {path} failed to import:\n{text}") from None
    classes = _state_classes(module)
    edges: Any = getattr(module, "edges", [])
    try:
        graph = Graph.build(
            (
                StateInfo(n, goto=bool(c.goto), request=bool(c.request), index=c.index)
                for n, c in classes.items()
            ),
            [(a, b) for a, b in edges],
        )
    except (UsageError, TypeError, ValueError) as exc:
        raise SystemLoadError(f"guardian system {path}: {exc}") from None
    initial = _initial(module, graph)
    request = getattr(module, "request", None)
    request = request if isinstance(request, str) else initial
    nominal: Any = getattr(module, "nominal", None)
    if nominal is not None and not isinstance(nominal, str):
        raise SystemLoadError(
            f"guardian system {path}: nominal must be a state's name (a str), not {nominal!r}"
        )
    nominal = nominal or ""
    for what, state in (("initial", initial), ("request", request), ("nominal", nominal)):
        if state and state not in graph:
            raise SystemLoadError(
                f"guardian system {path}: {what} state {state!r} is not defined; states: "
                f"{', '.join(graph.names)}"
            )
    return System(path, module, classes, graph, initial, request, nominal)
