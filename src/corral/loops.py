"""The event loop corral's processes run on: uvloop where it is installed, else asyncio's.

Theory of operation: the controller, the node and every other ``corral`` command, and the
blocking client's background loop (:mod:`corral.sync`), make their loop with
:func:`new_event_loop`. uvloop (libuv, with TLS and the self-pipe in C) takes about 0.3 ms
off a task's round trip on the bus (docs/performance.md); it is a dependency on Linux and
macOS. ``CORRAL_UVLOOP=0`` in the environment keeps asyncio's own loop (to compare, or to
rule uvloop out when chasing a bug).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "new_event_loop", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The function that makes a new event loop: uvloop's if it is importable and not turned
    off by ``CORRAL_UVLOOP=0``, else asyncio's."""
    if os.environ.get("CORRAL_UVLOOP", "1").strip().lower() not in ("0", "false", "no", "off"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop (see :func:`loop_factory`)."""
    return loop_factory()()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a new loop, as :func:`asyncio.run` does."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)
