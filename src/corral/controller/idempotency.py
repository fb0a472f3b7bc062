"""Idempotent submission: the same key within the window gets the first answer.

Theory of operation: a submission (``queue_task``, ``queue_tasks``, ``run_task``,
``send_command``, ``execute_command``, over HTTP or the bus) may carry a key chosen by the
client. :meth:`Submissions.once` looks the key up for that caller — first among the calls
still in flight in this process (a retry that arrives while the first attempt is being
written waits for it), then in the store — and either answers what was answered the first
time or runs the submission. The submission is given a :class:`Stamp`; it turns the answer
into an :class:`~corral.records.IdempotencyRow` that the submission hands to its own commit
(the task store's, or the controller's group commit), so the key is on disk exactly when
the work it answers is. A controller that restarts therefore answers a repeat from the
store, and a key that comes back with another request is refused (422) rather than
silently answered for the first.

Keys are scoped by caller (an API token's id, a bus credential, a dashboard user): two
callers never see each other's answers. Rows older than ``idempotency_window`` are ignored
on lookup and pruned by the group commit.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from corral.errors import IdempotencyKeyReused, RemoteError
from corral.records import IdempotencyRow

__all__ = ["MAX_KEY", "Stamp", "Submissions", "request_hash"]

T = TypeVar("T")

#: Longest key accepted (a uuid4 is 36 characters).
MAX_KEY = 200
#: Answers kept in memory after their submission returned: a submission may answer before
#: its key is on disk (``run_task`` waits for the result, not the commit), and a repeat in
#: that gap must find it. The store has every key; this only bridges the gap.
_RECENT = 10_000
#: The most keys whose presence this controller tracks itself; past it, every new key is
#: looked up in the store (correct, a read slower).
_TRACKED = 1_000_000
_json = msgspec.json.Encoder(order="sorted")


def request_hash(request: Any) -> str:
    """SHA-256 of ``request`` as decoded (field order fixed, mapping keys sorted)."""
    return hashlib.sha256(_json.encode(request)).hexdigest()


def check_key(key: str) -> None:
    """Refuse a key that is empty, too long, or holds control characters.

    Raises:
        RemoteError: (400) naming what is wrong with the key.
    """
    if not key or len(key) > MAX_KEY:
        raise RemoteError(
            f"an idempotency key must be 1 to {MAX_KEY} characters, got {len(key)}: "
            "send a uuid4, as the Python clients do",
            400,
        )
    if any(not c.isprintable() for c in key):
        raise RemoteError(
            "the idempotency key holds a control character: send a uuid4, as the Python clients do",
            400,
        )


@dataclass(frozen=True)
class Stamp:
    """What a submission needs to record its key with its answer."""

    caller: str
    key: str
    function: str
    request_hash: str
    created: float

    def row(self, answer: Any) -> IdempotencyRow:
        """The row recording ``answer`` (a reply struct) as this key's first answer."""
        return IdempotencyRow(
            caller=self.caller,
            key=self.key,
            function=self.function,
            request_hash=self.request_hash,
            answer=msgspec.json.encode(answer),
            created=self.created,
        )


class Submissions:
    """The controller's idempotency keys: in flight here, or in the store.

    Args:
        store: The open store (read only here; rows are written by the submissions' commits).
        window: Seconds a key is remembered.
        clock: Wall clock (seconds since the epoch).
    """

    def __init__(self, store: Any, window: float, clock: Callable[[], float]) -> None:
        self.store = store
        self.window = window
        self.clock = clock
        self._inflight: dict[tuple[str, str], asyncio.Future[IdempotencyRow | None]] = {}
        self._recent: OrderedDict[tuple[str, str], IdempotencyRow] = OrderedDict()
        #: keys that may be in the store (caller, key) -> when first seen, oldest first; a
        #: key not here was never stored, so it needs no lookup. ``None``: not tracked
        #: (before :meth:`load`, or past ``_TRACKED`` keys): every new key is looked up.
        self._seen: OrderedDict[tuple[str, str], float] | None = None
        #: submissions answered from a key (a repeat), for the counters
        self.repeats = 0

    def __repr__(self) -> str:
        tracked = "untracked" if self._seen is None else f"tracked={len(self._seen)}"
        return f"<Submissions in-flight={len(self._inflight)} {tracked} window={self.window}s>"

    async def load(self) -> None:
        """Learn which keys the store holds within the window, so that a new key (the common
        case: the clients make one per call) is answered without a read of the store.

        Raises:
            StoreError: The keys could not be read.
        """
        now = self.clock()
        pairs = await self.store.recent_keys(now - self.window, _TRACKED)
        self._seen = None if pairs is None else OrderedDict.fromkeys(pairs, now)

    def _maybe_stored(self, ident: tuple[str, str], now: float) -> bool:
        """Whether ``ident`` may be in the store; notes it as possibly stored from now on."""
        seen = self._seen
        if seen is None:
            return True
        while seen and next(iter(seen.values())) < now - self.window:
            seen.popitem(last=False)  # expired: answered as new anyway
        if ident in seen:
            return True
        if len(seen) >= _TRACKED:
            self._seen = None  # too many to track: look every key up from now on
            return True
        seen[ident] = now  # noted before the submission: a failed one is looked up again
        return False

    async def once(
        self,
        caller: str,
        key: str | None,
        function: str,
        request: Any,
        reply: type[T] | Any,
        submit: Callable[[Stamp | None], Awaitable[T]],
    ) -> T:
        """Run ``submit`` unless ``caller`` already sent ``key``; then answer as the first time.

        Args:
            caller: Who sends the key (a token id, a credential, a user).
            key: The client's key, or ``None`` (then ``submit(None)`` runs, unprotected).
            function: The function's name (a key may not move to another function).
            request: The decoded request, without the key (hashed to catch a reused key).
            reply: The reply's type, to decode a stored answer into.
            submit: Runs the submission; it must write ``stamp.row(answer)`` in the commit
                that makes the submission durable.

        Returns:
            The answer: new, or the first one for this key.

        Raises:
            IdempotencyKeyReused: the key came with another function or request before.
            RemoteError: a malformed key.
            StoreError: the key could not be looked up.
        """
        if key is None:
            return await submit(None)
        check_key(key)
        digest = request_hash(request)
        ident = (caller, key)
        while (pending := self._inflight.get(ident)) is not None:
            # The same key is being submitted right now (a retry raced its first attempt).
            row = await asyncio.shield(pending)
            if row is not None:
                repeated: T = self._answer(row, function, digest, reply)
                return repeated
            # The first attempt failed without recording anything: try again ourselves.
        fut: asyncio.Future[IdempotencyRow | None] = asyncio.get_running_loop().create_future()
        self._inflight[ident] = fut
        row = None
        try:
            now = self.clock()
            row = self._recent.get(ident)
            if row is None or row.created < now - self.window:
                row = None
                if self._maybe_stored(ident, now):
                    row = await self.store.find_key(caller, key, now - self.window)
            if row is not None:
                stored: T = self._answer(row, function, digest, reply)
                return stored
            stamp = Stamp(caller, key, function, digest, now)
            answer = await submit(stamp)
            row = stamp.row(answer)
            self._recent[ident] = row
            if len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
            return answer
        finally:
            del self._inflight[ident]
            fut.set_result(row)

    def _answer(self, row: IdempotencyRow, function: str, digest: str, reply: Any) -> Any:
        if row.function != function or row.request_hash != digest:
            raise IdempotencyKeyReused(
                f"idempotency key {row.key!r} was sent before with another request "
                f"({row.function}); a key names one submission: send a new key for a new "
                "request",
                422,
            )
        self.repeats += 1
        return msgspec.json.decode(row.answer, type=reply)
