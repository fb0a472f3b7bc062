"""The web dashboard: server-rendered pages under ``/ui`` on the controller's HTTP API port.

:func:`corral.dashboard.routes.mount` adds it to the API's FastAPI app; ``docs/dashboard.md``
describes the pages and their security.
"""
