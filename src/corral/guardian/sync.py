"""The blocking twin of :class:`~corral.guardian.GuardianClient`, for scripts and notebooks.

A thin wrapper over the async client, run on :mod:`corral.sync`'s background loop::

    from corral.guardian.sync import GuardianClient
    with GuardianClient.connect() as g:
        g.request("SUS_MC1", "ALIGNED", wait=10)
        print(g.view("SUS_MC1").state)
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

from corral import wire
from corral.config import Config
from corral.errors import Timeout
from corral.guardian import client as _async
from corral.sync import call, twin

__all__ = ["GuardianClient"]


@twin(_async.GuardianClient)
class GuardianClient:
    """Blocking guardian requests and views. Create with :meth:`connect`.

    Every method of the async :class:`~corral.guardian.GuardianClient` is here, blocking
    (``set_mode``, ``revive``, ``pause``, ``reload``, ``view``, ``graph``, ``list``, ``top``;
    ``watch`` gives a blocking iterator), derived the one way corral derives its blocking API
    (:func:`corral.sync.twin`); :meth:`request` adds ``wait``.
    """

    _inner: _async.GuardianClient

    def __init__(self, inner: _async.GuardianClient) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return repr(self._inner).replace("<GuardianClient", "<sync.GuardianClient", 1)

    @classmethod
    def connect(cls, config: Config | None = None, *, by: str | None = None) -> GuardianClient:
        """Connect with the admin credential; see the async :meth:`GuardianClient.connect`.

        Raises:
            ConfigError, AuthError, BusUnavailable: the bus refused or could not be reached.
        """
        return cls(call(_async.GuardianClient.connect(config, by=by)))

    def close(self) -> None:
        """Close the connection."""
        call(self._inner.close())

    def __enter__(self) -> GuardianClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def request(self, name: str, state: str, *, wait: float = 0.0) -> wire.GuardianView:
        """Ask guardian ``name`` for ``state``; with ``wait``, block until it arrived.

        Raises:
            NoSuchGuardian, GuardianRefused: it is not running or refused.
            Timeout: it did not answer, or did not arrive within ``wait``.
        """
        view = call(self._inner.request(name, state))
        if wait > 0 and not view.arrived:
            view = call(self._arrived(name, state, wait))
        return view

    async def _arrived(self, name: str, state: str, wait: float) -> wire.GuardianView:
        async def watch() -> wire.GuardianView:
            async with contextlib.aclosing(self._inner.watch(name, history=False)) as views:
                async for view in views:
                    if view is not None and view.request == state and (view.arrived or view.error):
                        return view
            raise Timeout(f"guardian {name} stopped publishing")

        try:
            return await asyncio.wait_for(watch(), wait)
        except TimeoutError:
            raise Timeout(f"guardian {name} did not arrive at {state} within {wait}s") from None

    def __getattr__(self, name: str) -> Any:
        # The twin's methods are set on the class (corral.sync.twin); an unknown name stays an
        # AttributeError, never a remote call.
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
