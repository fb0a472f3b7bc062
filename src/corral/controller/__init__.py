"""The controller (``corral controller``): registry, and later commands, tasks and the API."""

from corral.controller.service import Controller as Controller

__all__ = ["Controller"]
