"""A manager guardian driving three suspensions (``suspension.py``) together.

Run the three suspensions, then the manager::

    for n in 1 2 3; do corral guardian run examples/guardian/suspension.py --name SUS_MC$n & done
    corral guardian run examples/guardian/manager.py --name IMC
    corral guardian request IMC ALIGNED --wait 30

INIT takes the nodes into MANAGED mode (refused if another manager holds one). ALIGNED revives
a node that stalled after a watchdog trip, and jumps DOWN on any fault the checker finds: a
node that stopped answering (CONNECTION_ERROR), a node in ERROR, or a node a person took back.
DOWN holds while a fault lasts; request INIT to take the nodes back after a person had one.

The non-flapping pattern: a fault jumps to DOWN once, and DOWN's ``run`` returns True only
when the nodes arrived *and* nothing is wrong. A ``run`` returning just ``nodes.arrived`` would
be done at once (the nodes are DOWN), the walk would go back up, the checker would jump down
again: DOWN <-> ALIGNED as fast as states can run, for as long as the fault lasts.
"""

from guardian import GuardState, NodeManager

nodes = NodeManager(["SUS_MC1", "SUS_MC2", "SUS_MC3"])

request = "DOWN"
nominal = "ALIGNED"


def request_all(state):
    """Ask every node for ``state``. A node that does not answer is not an exception: the
    undelivered request is recorded as its fault, which the checker reports."""
    for node in nodes:
        nodes[node.name] = state


class INIT(GuardState):
    goto = True

    def main(self):
        nodes.set_managed()
        return True


class DOWN(GuardState):
    goto = True

    @nodes.checker()
    def main(self):
        request_all("DOWN")

    @nodes.checker()
    def run(self):
        return nodes.arrived and not nodes.faults()  # hold here while anything is wrong


class DAMPED(GuardState):
    @nodes.checker()
    def main(self):
        request_all("DAMPED")

    @nodes.checker(fail_return="DOWN")
    def run(self):
        return nodes.arrived


class ALIGNED(GuardState):
    @nodes.checker()
    def main(self):
        request_all("ALIGNED")

    @nodes.checker(fail_return="DOWN")
    def run(self):
        for node in nodes.get_stalled_nodes():
            node.revive()
        return nodes.arrived


edges = [("INIT", "DOWN"), ("DOWN", "DAMPED"), ("DAMPED", "ALIGNED"), ("ALIGNED", "DAMPED")]
