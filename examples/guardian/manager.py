"""A manager guardian driving three suspensions (``suspension.py``) together.

Run the three suspensions, then the manager::

    for n in 1 2 3; do corral guardian run examples/guardian/suspension.py --name SUS_MC$n & done
    corral guardian run examples/guardian/manager.py --name IMC
    corral guardian request IMC ALIGNED --wait 30

INIT takes the nodes into MANAGED mode (refused if another manager holds one). ALIGNED revives
a node that stalled after a watchdog trip, and jumps DOWN on any fault the checker finds: a
node that stopped answering (CONNECTION_ERROR), a node in ERROR, or a node a person took back.
DOWN holds while a fault lasts; request INIT to take the nodes back after a person had one.
"""

from corral.errors import NoSuchGuardian, Timeout
from corral.guardian import GuardState, NodeManager, notify

nodes = NodeManager(["SUS_MC1", "SUS_MC2", "SUS_MC3"])

request = "DOWN"


def request_all(state):
    """Ask every node that answers for ``state``."""
    for node in nodes:
        if node.status == "CONNECTION_ERROR":
            continue
        try:
            nodes[node.name] = state
        except (NoSuchGuardian, Timeout) as exc:  # it died just now: the checker will say so
            notify(f"{node.name}: {exc}")


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
