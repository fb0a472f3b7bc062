"""Entry limits without I/O: per-caller request rate and calls in flight, JSON nesting depth.

Theory of operation: :class:`CallLimiter` keeps, per caller key (an API token), a token
bucket (``rate`` calls a second on average, up to ``burst`` at once) and a count of calls in
flight. :meth:`CallLimiter.admit` is asked before a call runs: it either admits it (and
counts it in flight until :meth:`CallLimiter.release`) or returns how many seconds the
caller should wait, which the HTTP layer sends as ``Retry-After`` with a 429. The clock is
passed in, so a test drives time by hand. A caller whose bucket is full again and who has
nothing in flight is indistinguishable from a new one, so such entries are dropped when the
table grows: many distinct keys cost memory only while they are busy.

:func:`json_depth_error` measures how deeply a JSON text nests before it is decoded (a
recursive decoder given thousands of ``[`` exhausts the stack). It counts brackets outside
strings with C-speed primitives: a regular expression removes the strings, ``translate``
keeps only the brackets, and a running sum finds the deepest point.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

__all__ = ["DEFAULT_JSON_DEPTH", "CallLimiter", "json_depth", "json_depth_error"]

#: Deepest JSON nesting the API decodes (task arguments nest far less than this).
DEFAULT_JSON_DEPTH = 64

#: Past this many callers in the table, idle ones are dropped.
_PRUNE_AT = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


class CallLimiter:
    """Per-caller token bucket and in-flight count.

    Args:
        rate: Calls a second a caller may make on average (the refill rate).
        burst: Calls a caller may make at once (the bucket's size).
        max_in_flight: Calls a caller may have running at once.
        clock: Monotonic seconds (a fake one in tests).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        #: calls refused so far, by reason (``rate``, ``in_flight``)
        self.refused = {"rate": 0, "in_flight": 0}

    def __repr__(self) -> str:
        busy = sum(b.in_flight for b in self._buckets.values())
        return (
            f"<CallLimiter {self.rate}/s burst {self.burst} in-flight {self.max_in_flight} "
            f"callers={len(self._buckets)} busy={busy}>"
        )

    def admit(self, key: str) -> tuple[float, str] | None:
        """Ask to start a call for ``key``.

        Args:
            key: Who calls (the API token).

        Returns:
            ``None`` when the call may run (it counts in flight until :meth:`release`),
            else ``(seconds to wait, reason)``: ``rate`` (the bucket is empty) or
            ``in_flight`` (too many calls running).
        """
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), stamp=now)
        else:
            self._refill(bucket, now)
        if bucket.in_flight >= self.max_in_flight:
            self.refused["in_flight"] += 1
            return 1.0, "in_flight"  # no way to know when one ends: ask again soon
        if bucket.tokens < 1.0:
            self.refused["rate"] += 1
            return (1.0 - bucket.tokens) / self.rate, "rate"
        bucket.tokens -= 1.0
        bucket.in_flight += 1
        return None

    def release(self, key: str) -> None:
        """A call admitted for ``key`` has ended."""
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def in_flight(self, key: str) -> int:
        """Calls of ``key`` running now."""
        bucket = self._buckets.get(key)
        return 0 if bucket is None else bucket.in_flight

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
        bucket.stamp = now

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.in_flight == 0 and bucket.tokens >= self.burst:
                del self._buckets[key]


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds (HTTP allows no fractions), at least 1."""
    return str(max(1, math.ceil(seconds)))


# A JSON string: a quote, then runs of plain characters or escapes, then a quote.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(c for c in range(256) if c not in _BRACKETS)
# '[' and '{' become +1, ']' and '}' -1 (0xFF read as a signed byte).
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(text: bytes) -> int:
    """How deeply ``text`` (JSON) nests arrays and objects; brackets in strings do not count.

    Args:
        text: The JSON document (it need not be valid: unclosed brackets count).

    Returns:
        The deepest nesting, 0 for a scalar.
    """
    stripped = _STRING.sub(b"", text) if b'"' in text else text
    brackets = stripped.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = memoryview(brackets.translate(_STEPS)).cast("b")
    return max(0, max(accumulate(steps)))


def json_depth_error(text: bytes, limit: int = DEFAULT_JSON_DEPTH) -> str | None:
    """Why ``text`` nests too deeply to decode, or ``None`` when it is within ``limit``.

    A document with at most ``limit`` opening brackets cannot nest deeper, so the common
    case costs two ``bytes.count`` calls.

    Args:
        text: The JSON document.
        limit: The deepest nesting allowed.

    Returns:
        An error message naming the limit, or ``None``.
    """
    if text.count(b"[") + text.count(b"{") <= limit:
        return None
    depth = json_depth(text)
    if depth <= limit:
        return None
    return f"JSON nested {depth} levels deep; the limit is {limit} levels: send flatter arguments"
