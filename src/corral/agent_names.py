"""Agent-name constants (pyros's ``Agent.SCHEDULER``): a registry of declared agent names.

pyros defined a constant on ``Agent`` for every agent of the deployment, and code sent with
``Sender.send_to(Agent.SCHEDULER, Agent.SHUTDOWN)``. Here a deployment declares its agents'
names (``Agent.declare("scheduler", "alert_manager")``, or by defining an ``Agent`` subclass
with a ``name``), and ``Agent.<CONSTANT>`` resolves to the name: ``scheduler`` ->
``Agent.SCHEDULER``, ``alert-manager`` -> ``Agent.ALERT_MANAGER``. An undeclared constant raises
``AttributeError`` naming the declared ones and the fix. The registry is per process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from corral import subjects
from corral.errors import ConfigError

__all__ = ["AgentType", "constant_for", "declare", "declared"]

_CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")
# Constant (SCHEDULER) -> the declared agent name (scheduler).
_DECLARED: dict[str, str] = {}


def constant_for(name: str) -> str:
    """The constant an agent name is known by: ``alert-manager`` -> ``ALERT_MANAGER``.

    Args:
        name: An agent name.

    Returns:
        The name in capitals, ``-`` turned into ``_``.
    """
    return name.upper().replace("-", "_")


def declared() -> dict[str, str]:
    """Every declared constant and the agent name it gives.

    Returns:
        A copy of the registry (constant -> name).
    """
    return dict(_DECLARED)


def declare(names: Iterable[str], taken: Mapping[str, Any] = {}) -> dict[str, str]:  # noqa: B006
    """Declare agent names as constants (see :meth:`corral.Agent.declare`).

    Args:
        names: Agent names.
        taken: Attributes the constants may not shadow (``Agent``'s own, e.g. ``SHUTDOWN``).

    Returns:
        Every declared constant and its name.

    Raises:
        InvalidName: a name is not a valid agent name.
        ConfigError: two names give one constant, or a constant is taken or not a capital word.
    """
    for name in names:
        subjects.check_name(name, "agent")
        constant = constant_for(name)
        held = _DECLARED.get(constant)
        if held is not None and held != name:
            raise ConfigError(
                f"agent names {held!r} and {name!r} would both be Agent.{constant}: "
                "rename one of them"
            )
        if constant in taken or not _CONSTANT.fullmatch(constant):
            raise ConfigError(
                f"agent name {name!r} cannot be a constant: Agent.{constant} is Agent's own "
                "attribute or does not start with a letter; use the name as a string, or "
                "choose another name"
            )
        _DECLARED[constant] = name
    return declared()


class AgentType(type):
    """The metaclass of ``Agent``: ``Agent.SCHEDULER`` gives a declared agent's name."""

    def __getattr__(cls, attr: str) -> str:
        if _CONSTANT.fullmatch(attr):
            found = _DECLARED.get(attr)
            if found is not None:
                return found
            known = ", ".join(f"{c} ({n!r})" for c, n in sorted(_DECLARED.items())) or "none"
            raise AttributeError(
                f"no agent declared as {cls.__name__}.{attr}: declare it with "
                f"Agent.declare({attr.lower()!r}) (or define an Agent subclass with "
                f"name = {attr.lower()!r}) in a module both sides import; declared: {known}"
            )
        raise AttributeError(f"type object {cls.__name__!r} has no attribute {attr!r}")
