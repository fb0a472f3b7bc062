"""A handler for the fault run's node processes (`corral node --handlers fault_handlers`): it
records each command it applies in a file named after its node (``CORRAL_FAULT_NODE``)."""

from __future__ import annotations

import os
from pathlib import Path

from corral import command


@command
def record(directory: str, i: int) -> int:
    """Append ``i`` to ``<directory>/<node>`` and make it durable: what ran, in order."""
    path = Path(directory) / os.environ["CORRAL_FAULT_NODE"]
    with open(path, "a") as f:
        f.write(f"{i}\n")
        f.flush()
        os.fsync(f.fileno())
    return i
