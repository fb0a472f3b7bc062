"""Handlers for node processes in tests (`corral node --handlers sample_handlers`)."""

from __future__ import annotations

import os

from corral import command, param

param("gain", float, 1.0, "amplifier gain")


@command
def append(path: str, i: int) -> int:
    """Append ``i`` and this process's pid to ``path``: a record of what ran, in order."""
    with open(path, "a") as f:
        f.write(f"{i} {os.getpid()}\n")
    return i


@command
def noop() -> None:
    """Do nothing (benchmarks)."""
