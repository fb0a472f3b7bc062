"""Pydra's names for :class:`corral.Client` over HTTP: ``AsyncController``, ``Controller``
(blocking) and ``WebController(host, port)``.

>>> from corral import Controller                               # doctest: +SKIP
>>> c = Controller("http://127.0.0.1:4334", token="crl_...")
>>> c.list_tasks()
>>> task_id = c.queue_task("MyTask", foo="bar")
>>> c.wait(task_id).result

They are the one client (:class:`corral.Client`, and its blocking twin
:class:`corral.sync.Client`) constructed from the controller's API URL and a token; the same
class speaks the bus when given a ``nats://`` address. A function this client has no method
for is called with ``c.call("name", arg=...)``. Failures raise
:class:`~corral.errors.ControllerError` subclasses carrying Pydra's ``code``.
"""

from __future__ import annotations

from corral import sync
from corral.client import Client
from corral.config import Config, load_config
from corral.errors import NoKey, UsageError

__all__ = ["AsyncController", "Controller", "WebController"]


def _api_url(url: str | None, config: Config | None) -> tuple[str, Config | None]:
    if url:
        return url, config
    config = config or load_config()[0]
    return config.api_urls or config.api_url, config


class AsyncController(Client):
    """:class:`corral.Client` over the HTTP API (Pydra's client, asynchronously).

    Args:
        url: The API's URL, or each controller's (comma-separated: calls go to the leader);
            default from configuration (``api_urls``, else ``api_host``/``api_port``).
        token: An API token; default ``CORRAL_API_TOKEN``, ``api_token``, or the local admin
            token file that ``corral up`` writes.
        timeout: Seconds a call may take (a ``wait`` adds its own timeout).
        config: Configuration to take the defaults from (default: ``load_config()``).

    Raises:
        NoKey: no token was given or found.
        AuthenticationFailed: the token (or the file it names) is malformed; the message says
            what is wrong with it.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        config: Config | None = None,
    ) -> None:
        address, config = _api_url(url, config)
        super().__init__(address, token=token, timeout=timeout, config=config)


class Controller(sync.Client):
    """The blocking twin of :class:`AsyncController`: same methods, same arguments.

    Args:
        url: The API's URL, or each controller's (comma-separated); default from
            configuration.
        token: An API token; default ``CORRAL_API_TOKEN`` or the local admin token file.
        timeout: Seconds a call may take.
        config: Configuration to take the defaults from.

    Raises:
        NoKey: no token was given or found.
        AuthenticationFailed: the token (or the file it names) is malformed; the message says
            what is wrong with it.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        config: Config | None = None,
    ) -> None:
        address, config = _api_url(url, config)
        super().__init__(address, token=token, timeout=timeout, config=config)


class WebController(Controller):
    """Pydra's spelling of the blocking client: ``WebController(host, port)``.

    Pydra read the master's key from ``./master.key``; corral's API takes a token instead
    (``corral token create --role operate``), given here or found as :class:`Controller`
    finds it.

    Args:
        host: The controller's API host (``api_host``).
        port: Its API port (``api_port``).
        token: An API token, or a file holding one; default ``CORRAL_API_TOKEN`` or the local
            admin token file.
        scheme: ``http`` or ``https``.
        timeout: Seconds a call may take.
        config: Configuration to take the token from when none is given.

    Raises:
        NoKey: no token was given or found; the message says how to make one.
        AuthenticationFailed: the token (or the file it names) is malformed.
        UsageError: ``scheme`` is neither ``http`` nor ``https``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None = None,
        *,
        scheme: str = "http",
        timeout: float = 30.0,
        config: Config | None = None,
    ) -> None:
        if scheme not in ("http", "https"):
            raise UsageError(f"scheme must be 'http' or 'https', not {scheme!r}")
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        try:
            super().__init__(
                f"{scheme}://{shown}:{int(port)}", token, timeout=timeout, config=config
            )
        except NoKey:
            raise NoKey(
                f"WebController({host!r}, {port}) needs an API token: corral has no master.key. "
                "Pass token='crl_...' (or the path of a file holding one), or set "
                "CORRAL_API_TOKEN; make one with `corral token create --role operate`"
            ) from None
