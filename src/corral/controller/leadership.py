"""Which controller leads: the lease loop, the role, and the gate on writes.

Theory of operation: every controller runs one :class:`Leadership`. As a *standby* it tries to
take the store's lease (:mod:`corral.store.lease`) every :attr:`Leadership.poll` seconds; the
store grants it only once the leader's lease expired by the database's clock, raising the
fencing epoch by one. It then installs the fence on the store's writer (every later write is
conditional on this epoch) and calls ``on_lead`` (the controller loads its state from the store
and starts its leader's services). As the *leader* it renews the lease every third of it.

It steps down when it learns it was deposed: a renewal finds another holder, the writer's
fence refused a write (:meth:`deposed`), or it could not renew for a whole lease (a standby
may have taken over meanwhile: it must assume so). That last check falls due a lease after
the last renewal that succeeded *began*, which is no later than the lease's expiry by the
database's clock: a leader cut off from the store stops leading before a standby can take
the lease. ``on_deposed`` then ends the leader; the controller does not try to unwind its
services in place (see :meth:`corral.controller.service.Controller.serve_forever`).

A leader must also reach the nodes. With a ``probe`` (a round trip to the bus server), a
leader whose bus has not answered for a whole lease lets the lease go and steps down, so that
a standby that has the bus takes over at once (a leader cut off from the bus could renew its
lease forever while leading no node); and a standby whose bus does not answer does not take
the lease. If the bus is gone for everyone, nobody leads until it is back.

Every controller, whatever its role, records itself in the ``controllers`` table every third
of a lease (``corral status`` lists them) and answers :meth:`check_write` for the API: a
standby refuses every write with :class:`~corral.errors.NotLeader` naming the leader's
address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from corral.config import Config
from corral.controller.buswatch import BusWatch
from corral.errors import CorralError, NotLeader, RetryLater
from corral.store import Store
from corral.store.lease import ControllerRow, LeaseView

__all__ = ["MAX_EPOCH", "Leadership"]

#: the highest epoch a node's claim is taken at (far above any real count of takeovers)
MAX_EPOCH = 2**48

log = logging.getLogger("corral.controller")

T = TypeVar("T")


class Leadership:
    """This controller's role among several (see the module's documentation).

    Args:
        config: Its settings (``lease``).
        store: The open store.
        id: This controller's id (the lease's holder while it leads).
        started: When it started (seconds since the epoch).
        on_lead: Starts the leader's services at ``epoch``; called once, on taking the lease.
        on_deposed: Ends the leader (with why); called at most once.
        probe: Returns once the bus answered, within the seconds given (raises otherwise);
            ``None``: the bus is not watched.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        id: str,
        started: float,
        on_lead: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[str], None],
        probe: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.id = id
        self.started = started
        self._on_lead = on_lead
        self._on_deposed = on_deposed
        #: ``"standby"``, ``"leader"``, or ``"deposed"`` (once, for good)
        self.role = "standby"
        #: the epoch this controller leads at (0 until it does)
        self.epoch = 0
        #: the leading controller's id and API address, as last read ("" if none)
        self.leader_id = ""
        self.leader = ""
        #: the lease's epoch as last read
        self.seen_epoch = 0
        #: this controller's API address (set once its HTTP server listens)
        self.address = config.advertise_url
        self._sqlite = store.backend == "sqlite"
        #: every controller recently seen, as the last beat read them (``corral status``)
        self.known: list[dict[str, Any]] = []
        self._renewed = 0.0  # monotonic time a renewal that succeeded began
        #: the bus's round trips (PostgreSQL only: on SQLite there is no one to hand over to)
        self.bus = None if probe is None or self._sqlite else BusWatch(config, probe)
        self._task: asyncio.Task[None] | None = None
        self._abdicating: asyncio.Task[None] | None = None
        self._claims: dict[str, int] = {}  # node -> an epoch above ours it has seen
        #: set once the leader's services are started: writes before it are "ask again"
        self.ready = False
        #: done once it stepped down (made by the first read that waits on it)
        self._stepped_down: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Leadership {self.id[:8]} {self.role} epoch={self.epoch}>"

    @property
    def leading(self) -> bool:
        """Whether this controller leads now."""
        return self.role == "leader"

    @property
    def poll(self) -> float:
        """Seconds between a standby's tries to take the lease."""
        return min(1.0, max(0.1, self.config.lease / 10))

    def check_write(self, what: str = "this call") -> None:
        """Refuse a write unless this controller leads.

        Raises:
            NotLeader: it is a standby (or was deposed); ``leader`` is where to send it.
            RetryLater: it has taken the lease and is still loading what the last leader
                left (the services a write needs are not started yet).
        """
        if self.role == "leader":
            if self.ready:
                return
            raise RetryLater(
                f"this controller is taking over and does not take {what} yet; ask again",
                retry_after=0.2,
            )
        where = self.leader or "no controller leads yet"
        raise NotLeader(
            f"this controller is a standby and does not take {what}: send it to the leader "
            f"({where}); a client given several addresses does so on its own",
            leader=self.leader,
        )

    def check_serving(self, what: str = "this call") -> None:
        """Refuse every call, reads too, once this controller stepped down: it is being torn
        down, what it holds in memory is stale and its store may be out of reach.

        Raises:
            NotLeader: it stepped down; ``leader`` is the new leader if known (else "").
        """
        if self.role == "deposed":
            raise NotLeader(
                f"this controller stepped down and is stopping: it does not take {what}; send "
                f"it to the leader ({self.leader or 'another controller'})",
                leader=self.leader,
            )

    async def serving(self, call: Awaitable[T], what: str = "this call") -> T:
        """Await a read, unless this controller steps down first (its store may never
        answer: a cut-off leader's reads would hang until it stops).

        Raises:
            NotLeader: it stepped down before the read finished.
        """
        if self._sqlite:
            return await call
        if self._stepped_down is None:
            self._stepped_down = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(call)
        try:
            waits: set[asyncio.Future[Any]] = {task, self._stepped_down}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            self.check_serving(what)
        return task.result()

    async def try_lead(self) -> bool:
        """Try once to take the lease; if taken, fence the store and start leading.

        Returns:
            Whether this controller leads now.

        Raises:
            CorralError: the store failed, or starting the leader's services did.
        """
        if self.role != "standby":
            return self.leading
        if self.bus is not None and self.bus.lost():
            return False  # it could not lead the nodes: leave the lease to one that can
        view = await self.store.lease.acquire(
            self.id, self.address, self.config.lease, force=self._sqlite
        )
        self._saw(view)
        if view.holder != self.id:
            return False
        self._renewed = time.monotonic()
        self.epoch = view.epoch
        self.store.set_fence(self.id, view.epoch, self._fenced)
        self.role = "leader"
        self.ready = False
        log.info("leading", extra={"id": self.id[:8], "epoch": view.epoch})
        try:
            await self._on_lead(view.epoch)
            self.ready = True
        except BaseException as exc:
            # Half-started services are not unwound in place: let the lease go and end
            # this leader (a takeover's failure ends serve_forever; a start's is raised).
            await self.release()
            self.role = "deposed"
            self.store.set_fence(self.id, -1, None)
            if self._task is not None:
                log.exception("could not start leading", extra={"id": self.id[:8]})
                self._on_deposed(f"could not start leading: {exc!r}")
            raise
        try:
            await self._beat()
        except CorralError as exc:  # only `corral status` misses it until the next beat
            log.warning("could not record this controller: %s", exc)
        return True

    def start(self) -> None:
        """Run the lease loop in the background (stop it with :meth:`stop`)."""
        self._task = asyncio.create_task(self._loop(), name="lease")
        if self.bus is not None:
            self.bus.start()

    async def stop(self, release: bool = True) -> None:
        """Stop the loop; with ``release``, a leader lets the lease go at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.bus is not None:
            await self.bus.stop()
        if release:
            await self.release()

    async def release(self) -> None:
        """Let the lease go at once, if held (a clean stop: a standby takes over without
        waiting for it to expire)."""
        if self.leading:
            try:
                await self.store.lease.release(self.id, self.epoch)
            except CorralError as exc:
                log.warning("could not release the lease (it expires on its own): %s", exc)

    def deposed(self, why: str) -> None:
        """Step down at once (another controller leads): called by the store's fence, or
        by the loop. Harmless when called again."""
        if self.role == "deposed":
            return
        was = self.role
        self.role = "deposed"
        self.store.set_fence(self.id, -1, None)  # nothing more from this process lands
        if self.leader == self.address:  # itself, as read when it took the lease
            self.leader_id = self.leader = ""
        if self._stepped_down is not None and not self._stepped_down.done():
            self._stepped_down.set_result(None)
        if was == "leader":
            log.error("deposed: %s", why, extra={"id": self.id[:8], "epoch": self.epoch})
            self._on_deposed(why)

    def behind(self, node: str, seen: int, quorum: int) -> None:
        """Node ``node`` has seen epoch ``seen``, above this leader's: the store was restored
        from a backup (epochs only grow otherwise), and nodes ignore this leader.

        A node speaks only for itself: once ``quorum`` nodes (a majority of those up) claim
        an epoch above this one, the leader gives the lease up at the highest epoch that many
        claim (one node cannot push epochs up alone) and steps down; the next leader (this
        process again, as a fresh standby, or another) leads above it.
        """
        if not self.leading or seen <= self.epoch or self._abdicating is not None:
            return
        self._claims[node] = min(seen, MAX_EPOCH)
        claims = sorted(self._claims.values(), reverse=True)
        if len(claims) < max(1, quorum):
            return
        seen = claims[max(1, quorum) - 1]
        log.warning(
            "%d node(s) have seen epoch %d but this controller leads at %d: the store was "
            "restored or replaced; stepping down so that the next leader leads above it",
            len(claims),
            seen,
            self.epoch,
        )
        self._abdicating = asyncio.create_task(self._abdicate(seen), name="abdicate")

    async def _abdicate(self, seen: int) -> None:
        try:
            await self.store.lease.abdicate(self.id, self.epoch, seen)
        except CorralError as exc:
            log.warning("could not give the lease up (retried at the next report): %s", exc)
            self._abdicating = None
            return
        self.deposed(f"a node has seen epoch {seen}, above this leader's {self.epoch}")

    def _fenced(self, exc: NotLeader) -> None:
        self.leader = exc.leader or self.leader
        self.deposed(str(exc))

    async def look(self) -> None:
        """Read who leads now (before serving, so that a standby names the leader at once).

        Raises:
            StoreError: the store could not be read.
        """
        self._saw(await self.store.lease.read())

    def _saw(self, view: LeaseView) -> None:
        self.leader_id, self.leader, self.seen_epoch = view.holder, view.address, view.epoch

    async def _loop(self) -> None:
        beat_every = self.config.lease / 3
        last_beat = 0.0
        while self.role != "deposed":
            period = self.poll
            if self.leading:  # wake when the lease, or the bus's silence, would run out
                bus = self.config.lease if self.bus is None else self.bus.left()
                period = min(beat_every, self._left(), bus)
            await asyncio.sleep(period)
            try:
                if self.leading and self.bus is not None and self.bus.lost():
                    await self._let_go()
                    return
                if self.leading:
                    # A store that does not answer (a black-holed connection) counts as a
                    # failed renewal: a lease after the last one began, this leader steps
                    # down (the wait ends then at the latest).
                    timeout = max(0.05, min(self.config.lease / 2, self._left()))
                    await asyncio.wait_for(self._renew(), timeout)
                else:
                    await self.try_lead()
                if time.monotonic() - last_beat >= beat_every:
                    last_beat = time.monotonic()
                    await self._beat()
            except (CorralError, TimeoutError) as exc:
                why = str(exc) or "the store did not answer in time"
                log.warning("lease: %s", why, extra={"id": self.id[:8], "role": self.role})
                self._check_expired()
            except Exception:  # a bug must not end the loop silently
                log.exception("lease loop failed")
                self._check_expired()

    async def _renew(self) -> None:
        began = time.monotonic()
        if await self.store.lease.renew(self.id, self.epoch, self.config.lease):
            self._renewed = began
            return
        try:
            self._saw(await self.store.lease.read())
        finally:
            self.deposed(f"the lease was taken by {self.leader_id[:8] or 'nobody'} ({self.leader})")

    def _left(self) -> float:
        """Seconds until this leader must assume its lease expired (if not renewed)."""
        return max(0.0, self._renewed + self.config.lease - time.monotonic())

    async def _let_go(self) -> None:
        """Cut off from the bus for a whole lease: give the lease up and step down."""
        assert self.bus is not None
        lost = self.bus.silence()
        try:
            await asyncio.wait_for(
                self.store.lease.release(self.id, self.epoch), max(0.1, self.config.lease / 2)
            )
        except (CorralError, TimeoutError) as exc:
            log.warning("could not release the lease (it expires on its own): %s", exc)
        self.deposed(
            f"the bus has not answered for {lost:.1f}s: this leader reaches no node; it let "
            "the lease go so that a controller that reaches them leads"
        )

    def _check_expired(self) -> None:
        """A leader that could not renew for a whole lease must assume a standby took over."""
        if self.leading and not self._sqlite:
            if time.monotonic() - self._renewed >= self.config.lease:
                self.deposed(f"could not renew the lease for {self.config.lease:g}s")

    def row(self) -> ControllerRow:
        """This controller as the ``controllers`` table records it."""
        return ControllerRow(
            id=self.id,
            address=self.address,
            role=self.role,
            epoch=self.epoch if self.leading else self.seen_epoch,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self.started,
            last_seen=0.0,
        )

    async def _beat(self) -> None:
        await self.store.lease.beat(self.row())
        now, rows = await self.store.lease.controllers()
        silent = 3 * self.config.lease
        self.known = [
            {
                "id": r.id,
                "role": r.role if now - r.last_seen <= silent else "gone",
                "epoch": r.epoch,
                "address": r.address,
                "host": r.host,
                "pid": r.pid,
                "started": r.started,
                "last_seen": r.last_seen,
                "ago": round(max(0.0, now - r.last_seen), 3),
            }
            for r in rows
        ]

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` says of the role: role, epoch and the leader's id and address."""
        leader = self.id if self.leading else self.leader_id
        return {
            "role": self.role,
            "epoch": self.epoch if self.leading else self.seen_epoch,
            "leader": leader,
            "leader_address": self.address if self.leading else self.leader,
        }
