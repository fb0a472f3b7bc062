"""A mirror suspension guardian: DOWN -> SAFE -> DAMPED -> ALIGNED, with a watchdog.

Run one per suspension::

    corral guardian run examples/guardian/suspension.py --name SUS_MC1
    corral guardian request SUS_MC1 ALIGNED --wait 10

The hardware is simulated in ``HW``. Inject a fault (a watchdog trip) by creating the file
``<name>.fault`` next to this module (``touch examples/guardian/SUS_MC1.fault``): the next
ALIGNED cycle trips to TRIPPED, which switches everything off and falls back to DOWN. A trip
consumes the file (a glitch, not a broken part). In AUTO mode the guardian then walks back up to
its request by itself; in MANAGED mode it stalls in TRIPPED until its manager revives it.
"""

from pathlib import Path

from guardian import GuardState, log, notify

#: The simulated suspension: coil drivers, damping loops, residual motion, alignment offset.
HW = {"drivers": False, "damping": False, "motion": 1.0, "offset": 0.0}
#: Alignment offset (microradians) that ALIGNED ramps to, and the ramp step per cycle.
TARGET_OFFSET = 1.0
RAMP = 0.25

#: The state a suspension should be in: OK needs REQUEST == STATE == NOMINAL (and done).
nominal = "ALIGNED"


def watchdog_tripped(guardian: str) -> bool:
    """The simulated watchdog: trips once per ``<guardian>.fault`` file."""
    fault = Path(__file__).with_name(f"{guardian}.fault")
    if fault.exists():
        fault.unlink(missing_ok=True)
        return True
    return False


class DOWN(GuardState):
    """Everything off: the safe place to start and to fall back to."""

    goto = True
    index = 0

    def main(self):
        HW.update(drivers=False, damping=False, offset=0.0)

    def run(self):
        return True


class SAFE(GuardState):
    """Coil drivers on, outputs zero, watchdog armed."""

    index = 10

    def main(self):
        HW.update(drivers=True, damping=False, offset=0.0, motion=1.0)


class DAMPED(GuardState):
    """Damping loops on; done once the residual motion has settled."""

    index = 20

    def main(self):
        HW["damping"] = True

    def run(self):
        HW["motion"] *= 0.5
        if HW["motion"] > 0.1:
            notify(f"damping: residual motion {HW['motion']:.2f}")
            return False
        return True


class ALIGNED(GuardState):
    """Alignment offsets ramped on; the watchdog is checked every cycle."""

    index = 30

    def run(self):
        if watchdog_tripped(self.guardian):
            return "TRIPPED"
        if HW["offset"] < TARGET_OFFSET:
            HW["offset"] = min(TARGET_OFFSET, HW["offset"] + RAMP)
            return False
        return True


class TRIPPED(GuardState):
    """The watchdog tripped: drivers off. Not requestable; leads back DOWN."""

    request = False
    index = 5

    def main(self):
        HW.update(drivers=False, damping=False, offset=0.0)
        log("watchdog tripped in %s: drivers switched off", self.guardian)
        notify("watchdog tripped: drivers switched off")

    def run(self):
        notify("watchdog tripped: drivers switched off")
        return True


edges = [
    ("DOWN", "SAFE"),
    ("SAFE", "DAMPED"),
    ("DAMPED", "ALIGNED"),
    ("ALIGNED", "DAMPED"),
    ("DAMPED", "SAFE"),
    ("TRIPPED", "DOWN"),
]
