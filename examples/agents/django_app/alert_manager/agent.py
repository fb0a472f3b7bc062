"""The alert manager agent, written the pyros way: message constants and actions_by_message."""

import logging

from corral import Agent, Message

log = logging.getLogger(__name__)


class AlertManagerAgent(Agent):
    ALERT_MANAGER = "alert_manager"
    MSG_ALERT = "alert"
    MSG_STATUS = "status"

    def __init__(self) -> None:
        Agent.__init__(self, AlertManagerAgent.ALERT_MANAGER)
        self.alerts: list[str] = []
        self.actions_by_message[self.MSG_ALERT] = self.alert
        self.actions_by_message[self.MSG_STATUS] = self.status

    def work(self) -> None:
        log.info("alert manager: listening")

    def alert(self, msg: Message) -> int:
        # Handlers run one at a time, so this list needs no lock.
        self.alerts.append(msg.data)
        return len(self.alerts)

    def status(self, msg: Message) -> dict[str, object]:
        return {"alerts": len(self.alerts), "last": self.alerts[-1] if self.alerts else None}

    def shutdown(self) -> None:
        log.info("alert manager: shutdown after %d alert(s)", len(self.alerts))
