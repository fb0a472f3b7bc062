"""Two agents talking by name: a scheduler asks a telescope to observe, then parks it.

Run it against a running bus on the same data directory (`corral up`, or `corral controller`)::

    python examples/agents/two_agents.py

Neither agent knows where the other runs: a name is the whole address. Here both live in this
process, each on its own thread; move either one to another machine and nothing changes.
"""

from __future__ import annotations

import threading

import corral
from corral import Agent, Message, on


class Telescope(Agent):
    name = "telescope"

    def __init__(self) -> None:
        super().__init__()
        self.parked = threading.Event()

    @on("observe")
    def observe(self, msg: Message) -> str:
        # A plain handler runs in a worker thread, so it may block (move a mount, expose).
        print(f"telescope: observing {msg.data} for {msg.sender}")
        return f"{msg.data}.fits"

    @on("park")
    def park(self, msg: Message) -> None:
        print(f"telescope: parked, as {msg.sender} asked")
        self.parked.set()


class Scheduler(Agent):
    name = "scheduler"

    @on("night")
    async def night(self, msg: Message) -> list[str]:
        images = []
        for target in msg.data:
            # An agent talks to another one directly: ask waits for the handler's reply ...
            images.append(await self.ask("telescope", "observe", target, timeout=10))
        # ... and send_to does not wait at all.
        await self.send_to("telescope", "park")
        return images


def main() -> None:
    telescope, scheduler = Telescope(), Scheduler()
    telescope.start()  # a thread of its own; returns once the agent serves its name
    scheduler.start()
    try:
        images = corral.ask("scheduler", "night", ["M31", "M42", "NGC 7000"], timeout=30)
        # The scheduler's send_to("park") did not wait for the telescope: wait for it here.
        if not telescope.parked.wait(10):
            raise SystemExit("the telescope never parked")
        print(f"main: the night produced {images}")
    finally:
        scheduler.stop()  # runs each agent's shutdown() and waits for its thread
        telescope.stop()


if __name__ == "__main__":
    main()
