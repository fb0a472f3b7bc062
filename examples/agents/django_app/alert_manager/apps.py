import logging
import os
import sys

from corral import Agent, DuplicateName
from django.apps import AppConfig

log = logging.getLogger(__name__)


class AlertManagerConfig(AppConfig):
    name = "alert_manager"
    agent: Agent | None = None

    def ready(self) -> None:
        # ready() can run more than once (tests that reload apps), and `runserver` runs it in
        # its file watcher too: start the agent once, in the process that serves requests.
        if AlertManagerConfig.agent is not None or _runserver_watcher():
            return
        from alert_manager.agent import AlertManagerAgent

        agent = AlertManagerAgent()
        try:
            agent.start()  # a background thread; stopped at interpreter exit
        except DuplicateName as exc:
            # Another process of this site (a second worker, or the site while you run
            # `manage.py migrate`) holds the name; views reach that one by name all the same.
            log.warning("alert manager not started here: %s", exc)
            return
        AlertManagerConfig.agent = agent


def _runserver_watcher() -> bool:
    """True in the process `runserver` keeps only to restart the server when code changes."""
    return (
        "runserver" in sys.argv
        and "--noreload" not in sys.argv
        and os.environ.get("RUN_MAIN") != "true"
    )
