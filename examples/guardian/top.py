"""A monitor-only top node: its OK is the aggregate of its nodes' OK (LIGO's top node).

It never takes its nodes into MANAGED mode and never requests anything of them::

    corral guardian run examples/guardian/top.py --name TOP
    corral guardian show TOP        # OK only while every node is OK
    corral guardian top             # the same aggregate, from the command line (exit 1: not OK)

WATCHING is the nominal state. Its ``run`` returns True (done, so TOP is OK) only while every
node is OK, and otherwise notifies which are not and returns False (not done: TOP is not OK).
It never jumps, so a fault that lasts does not make TOP flap between states.
"""

from guardian import GuardState, NodeManager, notify

nodes = NodeManager(["SUS_MC1", "SUS_MC2", "SUS_MC3"])

request = "WATCHING"
nominal = "WATCHING"


class WATCHING(GuardState):
    goto = True

    def run(self):
        for node in nodes.not_ok():
            notify(f"{node.name} not OK: {node.state or '?'} ({node.status})")
        return nodes.OK


edges = []
