"""Child processes that die with their parent and stop cleanly.

``corral up`` and the test suite start nats-server, the controller and nodes as children. Each
child asks the kernel (``PR_SET_PDEATHSIG``) for SIGTERM when its parent dies, so even a
``kill -9`` of the parent leaves no process behind; :func:`stop` is the orderly path. Each child
runs in its own process group, so a terminal's Ctrl-C reaches only the parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["die_with_parent", "spawn", "stop", "wait_output"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux; a ``preexec_fn``: it runs in
    the child between fork and exec)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    rotate: tuple[int, int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that dies with this process.

    Args:
        argv: the command.
        env: extra environment variables (added to this process's).
        log: a file that receives the child's stdout and stderr; None inherits ours.
        cwd: working directory.
        rotate: ``(max_bytes, backups)``: rotate ``log`` at that size keeping that many older
            files (a thread of this process copies the child's output); None appends forever.
    """
    if log is not None and rotate is not None:
        return _spawn_rotated(argv, env, log, cwd, *rotate)
    out: IO[Any] | None = open(log, "ab") if log else None  # noqa: SIM115 - child owns it
    try:
        return subprocess.Popen(
            list(argv),
            env={**os.environ, **env} if env else None,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            preexec_fn=die_with_parent,
            # Its own process group: Ctrl-C in a terminal reaches only the parent, which then
            # stops the children in order (nodes first, the broker last). nats-server would
            # otherwise catch the SIGINT and vanish before the nodes can say goodbye.
            process_group=0,
        )
    finally:
        if out is not None:
            out.close()


_pumps: dict[int, threading.Thread] = {}


def _spawn_rotated(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    log: Path,
    cwd: Path | None,
    max_bytes: int,
    backups: int,
) -> subprocess.Popen[bytes]:
    from corral.log import rotating_file

    handler = rotating_file(log, max_bytes, backups)
    handler.setFormatter(logging.Formatter("%(message)s"))
    proc = subprocess.Popen(
        list(argv),
        env={**os.environ, **env} if env else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        preexec_fn=die_with_parent,
        process_group=0,
    )
    assert proc.stdout is not None
    stream = proc.stdout

    def pump() -> None:
        try:
            for line in stream:
                text = line.decode(errors="replace").rstrip("\n")
                handler.handle(logging.makeLogRecord({"msg": text, "args": None}))
        finally:
            stream.close()
            handler.close()

    thread = threading.Thread(target=pump, name=f"log {log.name}", daemon=True)
    thread.start()
    _pumps[proc.pid] = thread
    return proc


def wait_output(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Wait until the output of an exited child started with ``rotate`` is in its log."""
    thread = _pumps.pop(proc.pid, None)
    if thread is not None:
        thread.join(timeout)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Ask ``proc`` to stop with SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns:
        The exit status.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    wait_output(proc)
    return proc.returncode
