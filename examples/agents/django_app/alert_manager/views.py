import corral
from django.http import HttpRequest, JsonResponse

from alert_manager.agent import AlertManagerAgent


def status(request: HttpRequest) -> JsonResponse:
    """The alert manager's status, asked by name: it may run in this process or elsewhere."""
    try:
        reply = corral.ask(AlertManagerAgent.ALERT_MANAGER, AlertManagerAgent.MSG_STATUS, timeout=2)
    except corral.CorralError as exc:  # NoSuchAgent, Timeout, Overloaded, ...
        return JsonResponse({"error": str(exc)}, status=503)
    return JsonResponse(reply)
