"""What a node keeps of the leaders' fencing epochs: the highest seen, and nothing below it.

Several controllers may share a bus (docs/operations.md, "Several controllers"); one leads, at
an epoch that grows at every takeover. A deposed leader that has not noticed yet may still
publish: a node takes a controller's message only if its epoch is at least the highest it
has seen, and logs the first message of each lower epoch it ignores (not every one).
"""

from __future__ import annotations

import logging

__all__ = ["EpochFilter"]

log = logging.getLogger("corral.node")


class EpochFilter:
    """The highest leader epoch a node has seen (see the module's documentation).

    Args:
        node: The node's name, for the log.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        #: the highest epoch seen (0: none, or a controller of before issue #13)
        self.highest = 0
        #: messages ignored for a lower epoch
        self.ignored = 0
        self._logged: set[int] = set()

    def __repr__(self) -> str:
        return f"<EpochFilter {self.node} highest={self.highest} ignored={self.ignored}>"

    def accept(self, epoch: int, what: str) -> bool:
        """Whether to act on a controller's message of ``epoch``; raises the highest seen.

        Args:
            epoch: The message's epoch.
            what: What it is (``"announcement"``, ``"join reply"``...), for the log.
        """
        if epoch >= self.highest:
            self.highest = epoch
            return True
        self.ignored += 1
        if epoch not in self._logged and len(self._logged) < 64:
            self._logged.add(epoch)
            log.warning(
                "ignored a %s of epoch %d, below epoch %d: a deposed controller still talks",
                what,
                epoch,
                self.highest,
                extra={"node": self.node},
            )
        return False
