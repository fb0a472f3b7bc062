"""Addressed commands end to end, in one process: a bus, a controller and three lab nodes.

    python examples/commands/demo.py

Everything lives in a temporary data directory and is gone afterwards. On real machines the
same nodes run as `corral node --name spec1 --label cooled --handlers lab_handlers`, and the
client part is `corral send 'spec*' measure samples=2` and friends (see docs/commands.md).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
from pathlib import Path

from corral import Client, CommandHandle, Config, ControllerService, Node
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.node.handlers import load_handlers
from corral.security import Authority

# name -> labels. `label:cooled` will address spec2 and cam1; `spec*` spec1 and spec2.
FLEET = {"spec1": (), "spec2": ("cooled",), "cam1": ("cooled",)}


def show(what: str, handle: CommandHandle) -> None:
    """Print one command's outcome at every node it was addressed to."""
    print(f"#{handle.serial} {what}: {handle.counts()}")
    for node, outcome in sorted(handle.outcomes.items()):
        detail = outcome.result if outcome.state == "done" else outcome.error
        print(f"  {node:6} {outcome.state:8} {detail}")
    for name in handle.unknown:
        print(f"  {name:6} unknown  no such node")


async def main(data_dir: Path) -> bool:
    # A fresh data directory (what `corral init` makes) and a bus on a free port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config(data_dir=str(data_dir), nats_port=port)
    initialise(config)
    authority = Authority.load(config.data_path)
    broker = EmbeddedBroker(config, authority)
    await broker.start()
    controller = ControllerService(config)
    await controller.start()

    # What `corral node --handlers lab_handlers` does: import the module so it registers.
    load_handlers(["lab_handlers"])
    nodes = []
    for name, labels in FLEET.items():
        creds = config.data_path / f"{name}.creds"  # what `corral enroll NAME` writes
        creds.write_text(authority.enroll(name))
        node = Node(config, name, labels=labels, creds=creds)
        await node.start()
        await node.wait_joined()
        nodes.append(node)

    try:
        async with await Client.connect(config) as client:
            glob = await client.send("spec*", "measure", samples=2)
            show("measure on 'spec*'", await glob.wait(timeout=30))

            label = await client.command("label:cooled", "CALIBRATE", args={"lamp": "Ne"})
            show("CALIBRATE on 'label:cooled'", await label.wait(timeout=30))

            everyone = await client.get("*")
            show("GET every parameter on '*'", await everyone.wait(timeout=30))

            # A bad argument fails at each node, with the handler's error; nothing else breaks.
            bad = await client.command("*", "CALIBRATE", args={"lamp": "Xe"})
            show("CALIBRATE with a lamp nobody has", await bad.wait(timeout=30))

            # An unknown exact name is reported, not silently ignored.
            mixed = await client.send(["cam1", "spec9"], "park")
            show("park on 'cam1,spec9'", await mixed.wait(timeout=30))

            return (
                glob.ok
                and label.ok
                and everyone.ok
                and set(bad.failed) == set(FLEET)
                and mixed.unknown == ["spec9"]
                and mixed.results == {"cam1": "parked"}
            )
    finally:
        for node in nodes:
            await node.stop()
        await controller.stop()
        broker.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # so lab_handlers imports
    with tempfile.TemporaryDirectory(prefix="corral-demo-") as tmp:
        ok = asyncio.run(main(Path(tmp)))
    print("as expected" if ok else "NOT as expected")
    sys.exit(0 if ok else 1)
