"""Managing guardians from a guardian: :class:`NodeManager` and :class:`Node` (the seed's API).

Theory of operation: a system module creates ``nodes = NodeManager([...])`` at import; the
runtime that loads the module *attaches* it to its connection and event loop. From then on the
manager watches each subordinate's key in the guardian bucket, so reading ``nodes['X'].state``,
``nodes.arrived`` or ``node.stalled`` is a look at a local copy, never a round trip. Writing
(``nodes['X'] = 'ALIGNED'``, ``set_managed()``, ``revive()``) is a request to the subordinate;
its reply carries its new view, which replaces the copy at once, so ``arrived`` never answers
from before the request.

A subordinate whose view has not been refreshed for ``stale_after`` seconds (the bus
configuration's ``down_after``; guardians republish every ``heartbeat_interval``) reports
CONNECTION_ERROR, as does one that said goodbye.

Every method here blocks: call them from a state's ``main``/``run`` (the guardian's worker
thread), never from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import nats.errors

from corral import bus
from corral.config import Config
from corral.errors import CorralError, UsageError
from corral.guardian.client import GuardianClient, decode_view, open_bucket
from corral.guardian.machine import Mode, Status
from corral.guardian.node import Node
from corral.guardian.state import notify

__all__ = ["Node", "NodeManager"]

log = logging.getLogger("corral.guardian")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class NodeManager:
    """Manage subordinate guardians from a guardian's system module.

    Args:
        nodes: the subordinates' names.
        stale_after: seconds without news before a node is a connection error (default: the
            configuration's ``down_after``).
        timeout: seconds to wait for a subordinate to answer a request.
    """

    def __init__(
        self, nodes: Iterable[str], *, stale_after: float | None = None, timeout: float = 5.0
    ) -> None:
        self._lock = threading.Lock()
        self._news = threading.Condition(self._lock)
        self.nodes: list[Node] = [
            Node(
                n,
                manager=lambda: self.name,
                stale_after=lambda: self.stale_after,
                news=self._news,
                call=self._call,
                client=self._client,
            )
            for n in nodes
        ]
        self._by_name = {n.name: n for n in self.nodes}
        self._stale_after = stale_after
        self.timeout = timeout
        #: the managing guardian's name (set when attached)
        self.name = ""
        self._managing = False
        self._nc: bus.NATS | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._config: Config | None = None
        self._watch: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()

    def __repr__(self) -> str:
        return f"<NodeManager of {self.name or '?'} nodes={[str(n) for n in self.nodes]}>"

    @property
    def stale_after(self) -> float:
        """Seconds without news before a node is a connection error."""
        if self._stale_after is not None:
            return self._stale_after
        return self._config.down_after if self._config else 3.0

    # --- the seed's interface ----------------------------------------------------------------

    def __getitem__(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(
                f"{name!r} is not one of this manager's nodes: {', '.join(self._by_name)}"
            ) from None

    def __setitem__(self, name: str, state: str) -> None:
        self[name].set_request(state)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def set_managed(self) -> None:
        """Take every node into MANAGED mode, held by this manager.

        Raises:
            GuardianRefused: a node is held by another manager (named) or in MANUAL.
        """
        self._managing = True
        for node in self.nodes:
            node.set_managed()

    def release(self) -> None:
        """Give every node back (AUTO mode).

        Raises:
            GuardianRefused: this manager does not hold a node.
        """
        self._managing = False
        for node in self.nodes:
            node.release()

    @property
    def arrived(self) -> bool:
        """True when every node has arrived at its requested state."""
        return all(node.arrived for node in self.nodes)

    @property
    def OK(self) -> bool:  # noqa: N802 - the seed's spelling
        """Every node is OK (LIGO's top node: the aggregate of its nodes' OK)."""
        return all(node.OK for node in self.nodes)

    def not_ok(self) -> list[Node]:
        """The nodes that are not OK (a monitor-only top node notifies them)."""
        return [node for node in self.nodes if not node.OK]

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block until ``condition()`` holds, re-checking on every node update.

        For a state that wants to react at once rather than at its next cycle, e.g.
        ``nodes.wait(lambda: nodes.arrived, 10)``.

        Args:
            condition: checked with the node copies unchanging (do not call requests in it).
            timeout: seconds to wait at most.

        Returns:
            Whether the condition holds (False: timed out).
        """
        deadline = time.monotonic() + timeout
        with self._news:  # node updates wait while the condition is checked: none is missed
            while True:
                if condition():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Wake at least every 0.1 s: staleness changes without an update.
                self._news.wait(min(left, 0.1))

    def get_stalled_nodes(self) -> list[Node]:
        """The nodes that jumped while MANAGED and hold there."""
        return [node for node in self.nodes if node.stalled]

    def faults(self) -> list[str]:
        """What is wrong with the nodes: connection errors, node errors, and (once
        :meth:`set_managed` was called) nodes no longer held by this manager."""
        return [text for text, fault in self._check() if fault]

    def reports(self) -> list[str]:
        """Every fault, and every node's notifications (passed on, not faults)."""
        return [text for text, _ in self._check()]

    def _check(self) -> list[tuple[str, bool]]:
        found: list[tuple[str, bool]] = []
        for node in self.nodes:
            status = node.status
            if node.fault and status == Status.CONNECTION_ERROR:
                found.append((f"{node.name}: connection error ({node.fault})", True))
                continue
            if status == Status.CONNECTION_ERROR:
                found.append((f"{node.name}: connection error ({self._silence(node)})", True))
                continue
            if node.fault:
                found.append((f"{node.name}: {node.fault}", True))
            if status == Status.ERROR:
                found.append((f"{node.name}: ERROR in state {node.state}", True))
            view = node.view
            if self._managing and view is not None and view.instance != node.held_instance:
                found.append((f"{node.name}: restarted (now {node.mode}); request INIT", True))
            elif self._managing and (node.mode != Mode.MANAGED or node.managed_by != self.name):
                who = node.managed_by or "a person"
                found.append((f"{node.name}: mode changed to {node.mode} (by {who})", True))
            found.extend((f"{node.name}: {note}", False) for note in node.notifications)
        return found

    def checker(self, fail_return: str | None = None) -> Callable[[F], F]:
        """Decorate a state's ``main`` or ``run`` to check the nodes first.

        Each fault (connection error, node error, mode changed by someone else) and each
        node notification is raised as a notification (:func:`~corral.guardian.notify`).
        With ``fail_return``, a fault (not a mere notification) makes the method return that
        state instead of running: a jump there.

        Args:
            fail_return: the state to jump to on a fault (``None``: only notify).

        Returns:
            The decorator.
        """

        def decorate(func: F) -> F:
            @functools.wraps(func)
            def checked(*args: Any, **kwargs: Any) -> Any:
                found = self._check()
                for text, _ in found:
                    notify(text)
                if fail_return is not None and any(fault for _, fault in found):
                    return fail_return
                return func(*args, **kwargs)

            return checked  # type: ignore[return-value]

        return decorate

    # --- wiring (done by the runtime) -------------------------------------------------------

    def _silence(self, node: Node) -> str:
        if node.view is None:
            return "never heard from"
        if not node.view.alive:
            return "it stopped"
        return f"no news for {time.monotonic() - node.heard:.1f}s"

    def _client(self) -> GuardianClient:
        if self._nc is None:
            raise UsageError(
                "this NodeManager is not attached to a running guardian: create it in a system "
                "module run by `corral guardian run` (or corral.guardian.Guardian)"
            )
        return GuardianClient(self._nc, by=self.name, manager=True, timeout=self.timeout)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            self._client()  # raises the not-attached error
            raise AssertionError("unreachable")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise UsageError(
                "NodeManager methods block: call them from a state's main()/run(), not from "
                "the event loop"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result(self.timeout + 1)

    async def attach(
        self, nc: bus.NATS, loop: asyncio.AbstractEventLoop, name: str, config: Config
    ) -> None:
        """Serve guardian ``name`` (its runtime calls this): follow the nodes' views on
        ``nc`` from ``loop``, and send their requests from there."""
        self._nc, self._loop, self.name, self._config = nc, loop, name, config
        self._watching = asyncio.Event()
        self._watch = asyncio.create_task(self._follow(), name=f"manager-{name}")
        ready = asyncio.ensure_future(self._watching.wait())
        await asyncio.wait({ready, self._watch}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._watch.done():
            self._watch.result()  # raises what stopped it

    async def detach(self) -> None:
        """Stop following the nodes (the guardian stops, or reloads its system module)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            # _follow sees that it is no longer the current watch and ends: a cancellation
            # that a library turns into an error it handles (a bus request cancelled while the
            # connection closes) must not leave it retrying for ever.
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch

    async def _follow(self) -> None:
        """Keep the local copies of every node's view up to date (a KV watch per manager).

        Every live guardian republishes each heartbeat, so a watch that delivers nothing for
        three times ``stale_after`` is broken (e.g. a restarted server lost the in-memory
        bucket and its consumer): it is made again. Meanwhile the nodes turn CONNECTION_ERROR.
        """
        me = asyncio.current_task()
        while self._watch is me:
            try:
                await self._watch_once()
            except (nats.errors.Error, CorralError, OSError) as exc:
                if self._watch is not me:
                    return  # detached meanwhile (the guardian stops)
                log.warning("manager watch failed: %s", exc, extra={"guardian": self.name})
                await asyncio.sleep(min(1.0, self.stale_after))

    async def _watch_once(self) -> None:
        assert self._nc is not None
        replicas = self._config.jetstream_replicas if self._config else 1
        kv = await open_bucket(self._nc, create=True, replicas=replicas)
        # One watch of the whole bucket, filtered here: one consumer however many nodes.
        watcher = await kv.watchall()
        try:
            replaying = True
            while True:
                try:
                    entry = await watcher.updates(  # type: ignore[no-untyped-call]
                        timeout=max(5.0, 3 * self.stale_after)
                    )
                except nats.errors.TimeoutError:
                    return  # silence from every guardian, ourselves included: watch again
                if entry is None:
                    replaying = False
                    self._watching.set()
                    continue
                node = self._by_name.get(entry.key)
                if node is None or not entry.value or entry.operation is not None:
                    continue
                try:
                    view = decode_view(entry.value)
                except CorralError:
                    continue
                # A stored view's age counts only while replaying; a live one is news now.
                node.update(view, age=time.time() - view.beat if replaying else 0.0)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watcher.stop(), 2.0)  # type: ignore[no-untyped-call]
