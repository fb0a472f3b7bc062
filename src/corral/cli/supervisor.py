"""`corral up`'s supervisor: a child that dies is started again, with backoff.

``corral up`` owns the bus (its nats-server child) and the controllers; when a controller exits
for any reason (a crash, ``kill -9``, the OOM killer) the bus stays and the nodes keep their
connection, and the supervisor starts the controller again after 0.5 s, doubling the wait at
each quick exit up to 10 s, and back to 0.5 s once a run lasted :data:`STEADY` seconds. Each
restart is said on stderr. The caller stops the children (Ctrl-C, SIGTERM): cancelling
:meth:`Supervised.run` stops restarting, nothing else.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable

from corral.cli.common import err

__all__ = ["FIRST_DELAY", "MAX_DELAY", "STEADY", "Supervised", "exited"]

#: seconds before the first restart
FIRST_DELAY = 0.5
#: longest wait between restarts
MAX_DELAY = 10.0
#: a run this long (seconds) was not a crash loop: the next restart waits FIRST_DELAY again
STEADY = 30.0


async def exited(proc: subprocess.Popen[bytes]) -> int:
    """Wait until ``proc`` exits (a pidfd on Linux, a thread elsewhere); return its status."""
    if proc.poll() is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux, or an old kernel: a thread waits
        return await asyncio.to_thread(proc.wait)
    gone = asyncio.Event()
    try:
        loop.add_reader(fd, gone.set)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return proc.wait()


class Supervised:
    """One child of ``corral up``, started again whenever it exits.

    Args:
        name: the name in ``children`` and in what is printed (``controller``).
        start: starts the child (called on the event loop's thread: the kernel's
            parent-death signal is tied to the thread that forks).
        children: the live table of children; ``children[name]`` is the current process.
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], subprocess.Popen[bytes]],
        children: dict[str, subprocess.Popen[bytes]],
    ) -> None:
        self.name = name
        self.start = start
        self.children = children
        #: times the child was started again
        self.restarts = 0

    def __repr__(self) -> str:
        return f"<Supervised {self.name} restarts={self.restarts}>"

    async def run(self) -> None:
        """Start the child if it is not running, then start it again each time it exits."""
        if self.name not in self.children:
            self.children[self.name] = self.start()
        delay = FIRST_DELAY
        started = time.monotonic()
        while True:
            status = await exited(self.children[self.name])
            if time.monotonic() - started >= STEADY:
                delay = FIRST_DELAY
            self.restarts += 1
            stamp = time.strftime("%H:%M:%S")
            err.print(
                f"{stamp} [yellow]{self.name} exited (status {status}); starting it again in "
                f"{delay:g}s (restart {self.restarts}, see {self.name}.log)[/]",
                highlight=False,
                soft_wrap=True,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            try:
                self.children[self.name] = self.start()
            except OSError as exc:  # the exited process stays in place: try again later
                err.print(f"[red]cannot start {self.name}: {exc}[/]", highlight=False)
            else:
                started = time.monotonic()
