"""A worker process of ``bench_join.py``: host many nodes in one event loop.

Kept apart from the driver so that a worker imports only what a node process needs
(``corral.config`` and ``corral.node``): the driver's rich, psutil, CLI and client
imports would cost every worker ~0.1 s of CPU, ten to twenty times per run.

Usage (by the driver): ``python _join_worker.py SPEC.json`` where the spec holds ``config``
(Config fields) and ``nodes`` ([name, credentials file] pairs).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from corral import loops
from corral.config import Config
from corral.node import Node


async def run_worker(spec: dict[str, Any]) -> None:
    """Host the nodes of ``spec`` (``config`` fields, ``nodes``: [name, creds]) forever."""
    config = Config(**spec["config"])
    started = time.time()
    nodes = [Node(config, name, creds=Path(creds)) for name, creds in spec["nodes"]]
    await asyncio.gather(*(node.start(wait_for_bus=60.0) for node in nodes))
    # One line for the driver: when imports were done and when every connection was open.
    print(json.dumps({"imported": started, "connected": time.time()}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    # The loop `corral node` runs on (uvloop where installed), as a node process would.
    loops.run(run_worker(json.loads(Path(sys.argv[1]).read_text())))
