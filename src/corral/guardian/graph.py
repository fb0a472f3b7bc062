"""A guardian system's state graph: which states exist, which edges join them, shortest paths.

Pure data and breadth-first search; no I/O. A ``goto`` state has an implicit edge from every
state (LIGO Guardian's rule), so a path search always finds a way down to a safe state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from corral.errors import UsageError

__all__ = ["Graph", "StateInfo"]


@dataclass(frozen=True)
class StateInfo:
    """What the graph knows of a state."""

    name: str
    goto: bool = False
    request: bool = True
    index: int | None = None


@dataclass(frozen=True)
class Graph:
    """States and directed edges, validated at construction.

    Args:
        states: the states, in the order they were declared.
        edges: ``(from, to)`` pairs; order breaks ties between equally short paths.

    Raises:
        UsageError: no states, or an edge names a state that does not exist.
    """

    states: tuple[StateInfo, ...]
    edges: tuple[tuple[str, str], ...]
    _by_name: Mapping[str, StateInfo] = field(init=False, repr=False, compare=False)
    _next: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.states:
            raise UsageError("a guardian system needs at least one GuardState subclass")
        by_name = {s.name: s for s in self.states}
        for a, b in self.edges:
            for end in (a, b):
                if end not in by_name:
                    raise UsageError(
                        f"edge ({a!r}, {b!r}) names unknown state {end!r}; states are "
                        f"{', '.join(by_name)}"
                    )
        gotos = [s.name for s in self.states if s.goto]
        nxt: dict[str, list[str]] = {s.name: [] for s in self.states}
        for a, b in self.edges:
            if b not in nxt[a]:
                nxt[a].append(b)
        for name in nxt:
            for g in gotos:
                if g != name and g not in nxt[name]:
                    nxt[name].append(g)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_next", {k: tuple(v) for k, v in nxt.items()})

    @classmethod
    def build(cls, states: Iterable[StateInfo], edges: Iterable[tuple[str, str]]) -> Graph:
        """Build and validate a graph.

        Args:
            states: the states.
            edges: ``(from, to)`` pairs.

        Returns:
            The graph.

        Raises:
            UsageError: as the constructor.
        """
        return cls(tuple(states), tuple((str(a), str(b)) for a, b in edges))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> StateInfo:
        return self._by_name[name]

    @property
    def names(self) -> tuple[str, ...]:
        """Every state's name, in declaration order."""
        return tuple(s.name for s in self.states)

    @property
    def requestable(self) -> tuple[str, ...]:
        """The states a request may name."""
        return tuple(s.name for s in self.states if s.request)

    def successors(self, name: str) -> tuple[str, ...]:
        """States one edge away from ``name`` (implicit goto edges included)."""
        return self._next.get(name, ())

    def path(self, start: str, goal: str) -> list[str] | None:
        """The shortest walk from ``start`` to ``goal``, both included (``[start]`` if equal).

        Returns:
            The states in order, or ``None`` if ``goal`` cannot be reached.
        """
        if start == goal:
            return [start]
        parent: dict[str, str] = {start: start}
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for there in self._next.get(here, ()):
                if there in parent:
                    continue
                parent[there] = here
                if there == goal:
                    walk = [there]
                    while walk[-1] != start:
                        walk.append(parent[walk[-1]])
                    return walk[::-1]
                queue.append(there)
        return None

    def dot(self, name: str, current: str = "", path: Iterable[str] = ()) -> str:
        """The graph in Graphviz DOT, the current state filled and the path's edges bold.

        Args:
            name: the graph's title (the guardian's name).
            current: the state to fill.
            path: the states still to walk after ``current``.

        Returns:
            DOT source text.
        """
        walk = [current, *path] if current else list(path)
        on_path = set(zip(walk, walk[1:], strict=False))
        lines = [f'digraph "{name}" {{', "  rankdir=LR;", "  node [shape=box, style=rounded];"]
        for s in self.states:
            attrs = []
            if s.name == current:
                attrs.append('style="rounded,filled", fillcolor="palegreen"')
            elif s.name in walk:
                attrs.append('color="blue"')
            if s.goto:
                attrs.append("peripheries=2")
            if not s.request:
                attrs.append('fontcolor="gray40"')
            lines.append(f'  "{s.name}"' + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
        for a, b in self.edges:
            style = ' [color="blue", penwidth=2.5]' if (a, b) in on_path else ""
            lines.append(f'  "{a}" -> "{b}"{style};')
        for a, b in sorted(on_path - set(self.edges)):
            lines.append(f'  "{a}" -> "{b}" [color="blue", penwidth=2.5, style=dashed];')
        lines.append("}")
        return "\n".join(lines) + "\n"
