"""The controller (``corral controller``): registry, commands, tasks, groups, reports and the
HTTP API's functions. :mod:`corral.app` adds the HTTP server and the dashboard to it."""

from corral.controller.service import Controller as Controller

__all__ = ["Controller"]
