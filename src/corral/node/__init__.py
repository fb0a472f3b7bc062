"""The node daemon (``corral node``)."""

from corral.node.daemon import Node as Node

__all__ = ["Node"]
