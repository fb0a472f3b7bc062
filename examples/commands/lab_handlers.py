"""Handlers for a lab instrument node: load them with `corral node --handlers lab_handlers`.

The module is imported once by the node process. Its decorators register what the node can
do: two parameters that `corral get` / `corral set` read and write, two commands that
`corral send` runs, and a message type of its own. The "instrument" here is simulated.
"""

from __future__ import annotations

import asyncio
import random
import time

import corral

# GET / SET: typed parameters. `corral set 'spec*' exposure=0.5` converts "0.5" to a float;
# a value that does not convert fails that node's outcome with a clear error.
exposure = corral.param("exposure", float, 0.1, "integration time per sample, in seconds")
grating = corral.param("grating", str, "G300", "the grating in the light path")


@corral.command
def measure(samples: int = 3) -> dict[str, object]:
    """Take `samples` readings (a plain function: it runs in a worker thread, so it may block)."""
    readings = []
    for _ in range(samples):
        time.sleep(exposure.value / 10)  # stand-in for waiting on the hardware
        readings.append(round(random.gauss(1000.0, 15.0), 1))
    return {"grating": grating.value, "exposure": exposure.value, "counts": readings}


@corral.command(name="park")
async def park_instrument() -> str:
    """Move to the safe position (a coroutine: it runs on the node's event loop)."""
    await asyncio.sleep(0.05)
    return "parked"


@corral.message_type("CALIBRATE")
async def calibrate(args: dict[str, object], data: bytes) -> dict[str, object]:
    """A message type of our own: `await client.command(targets, "CALIBRATE", args={...})`."""
    lamp = str(args.get("lamp", "HgAr"))
    if lamp not in ("HgAr", "Ne"):
        raise ValueError(f"no {lamp} lamp on this instrument (it has HgAr, Ne)")
    await asyncio.sleep(0.05)
    return {"lamp": lamp, "lines_found": 12 if lamp == "HgAr" else 9}
