"""``corral.Controller``: the controller's HTTP API as local method calls (Pydra's client).

>>> from corral import Controller                               # doctest: +SKIP
>>> c = Controller("http://127.0.0.1:4334", token="crl_...")
>>> c.list_tasks()
>>> task_id = c.queue_task("MyTask", foo="bar")
>>> c.wait(task_id).result

:class:`AsyncController` is the primary implementation (httpx, one keep-alive connection
pool); :class:`Controller` is its blocking twin, each call run on corral's portal loop. A
function this client does not name is still callable (``c.some_new_call(x=1)``), as in
Pydra, where "it is assumed that the developer using the controller will know which
functions are available". Failures raise :class:`~corral.errors.ControllerError`
subclasses carrying Pydra's ``code``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
import msgspec

from corral import api_models as m
from corral._http import LeanTransport
from corral.config import Config, load_config
from corral.errors import (
    Disconnected,
    FunctionNotFound,
    NoKey,
    NotSerializable,
    TaskFailed,
    UsageError,
    from_wire,
)
from corral.tokens import load_token, read_token

__all__ = ["AsyncController", "Controller", "WebController"]

T = TypeVar("T")

_error_decoder = msgspec.json.Decoder(m.ErrorBody)


def _raise(response: httpx.Response) -> None:
    try:
        body = _error_decoder.decode(response.content)
    except msgspec.DecodeError:
        text = f"HTTP {response.status_code}: {response.text[:200]}"
        body = m.ErrorBody(code=-5, error=text)
    raise from_wire(
        body.kind,
        body.error,
        code=body.code,
        status=response.status_code,
        fields=body.fields,
        retry_after=body.retry_after,
        step=body.step,
    )


def _check_args(args: dict[str, Any]) -> None:
    try:
        msgspec.msgpack.encode(args)
        msgspec.json.encode(args)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise NotSerializable(
            f"task arguments must be msgpack-able data (dicts, lists, str, numbers, bool, "
            f"None): {exc}"
        ) from None


class AsyncController:
    """The controller API over HTTP, asynchronously.

    Args:
        url: The API's URL; default from configuration (``api_host``/``api_port``).
        token: An API token; default ``CORRAL_API_TOKEN``, ``api_token``, or the local admin
            token file that ``corral up`` writes.
        timeout: Seconds an HTTP call may take (a ``wait`` adds its own timeout).
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
        if url is None or token is None:
            config = config or load_config()[0]
        self.url = (url or (config.api_url if config else "")).rstrip("/")
        # A token or a file holding one, from any source; checked before any request.
        env = os.environ.get("CORRAL_API_TOKEN")
        if token:
            found: str | None = load_token(token, "the token given (token= or --token)")
        elif env:
            found = load_token(env, "CORRAL_API_TOKEN")
        else:
            found = read_token(config) if config is not None else None
        if not found:
            raise NoKey(
                "no API token: pass token=..., set CORRAL_API_TOKEN, or create one with "
                "`corral token create --role operate`"
            )
        self.timeout = timeout
        self._lean = LeanTransport()
        parsed = httpx.URL(self.url)
        self._plain = parsed.scheme == "http" and not parsed.path.strip("/")
        self._host, self._port = parsed.host, parsed.port or 80
        self._head = (
            f"host: {parsed.host}:{self._port}\r\nauthorization: Bearer {found}\r\n"
            "content-type: application/json\r\naccept: application/json\r\n"
        ).encode()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            transport=self._lean,
            headers={"authorization": f"Bearer {found}", "content-type": "application/json"},
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"<AsyncController {self.url}>"

    async def __aenter__(self) -> AsyncController:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def call(
        self, function: str, reply: Any = Any, http_timeout: float | None = None, /, **kwargs: Any
    ) -> Any:
        """Call API function ``function`` with keyword arguments; decode the reply as ``reply``.

        A submission (``queue_task``, ``queue_tasks``, ``run_task``, ``send_command``,
        ``execute_command``) carries an ``Idempotency-Key``: ``idempotency_key=`` or a new
        uuid4. While the controller cannot be reached or its connection drops, it is sent
        again with the same key (with backoff, within the client's timeout), and the
        controller answers a repeat with its first answer. No other call is sent twice
        except reads.

        Args:
            function: The API function's name.
            reply: The type to decode the reply into.
            http_timeout: Seconds the HTTP call may take (default: the client's timeout).
            kwargs: The function's arguments (and ``idempotency_key`` for a submission).

        Raises:
            ControllerError: a subclass for the error code the controller answered with.
            IdempotencyKeyReused: the key was sent before with another request.
            Disconnected: the controller could not be reached.
            Timeout: a ``wait`` ran out of time.
            UsageError: ``idempotency_key`` given to a call that is not a submission.
        """
        if not function.isidentifier():
            raise FunctionNotFound(f"{function!r} cannot name an API function", 404)
        key = kwargs.pop("idempotency_key", None)
        if function not in m.KEYED:
            if key is not None:
                raise UsageError(f"{function} takes no idempotency_key: only submissions do")
            return await self._call(function, reply, http_timeout, kwargs, None)
        key = key or str(uuid.uuid4())
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            try:
                return await self._call(function, reply, http_timeout, kwargs, key)
            except Disconnected:
                # Nothing or everything was done: the key makes the next attempt safe.
                if time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _call(
        self,
        function: str,
        reply: Any,
        http_timeout: float | None,
        kwargs: dict[str, Any],
        key: str | None,
    ) -> Any:
        """One HTTP exchange (re-sent on a fresh connection only if a read or keyed)."""
        body = msgspec.json.encode(kwargs)
        safe = key is not None or function in m.READS
        try:
            if self._plain:  # the common case, on one write without httpx's machinery
                head = b"POST /%s HTTP/1.1\r\n" % function.encode() + self._head
                if key is not None:
                    head += b"idempotency-key: %s\r\n" % key.encode()
                status, content = await self._lean.post(
                    self._host, self._port, head, body, http_timeout or self.timeout, safe
                )
                if status != 200:
                    _raise(httpx.Response(status, content=content))
                return msgspec.json.decode(content, type=reply)
            headers = {} if key is None else {"idempotency-key": key}
            response = await self._http.post(
                f"/{function}", content=body, headers=headers, timeout=http_timeout or self.timeout
            )
        except httpx.TransportError as exc:
            raise Disconnected(
                f"cannot reach the controller API at {self.url}: {exc or type(exc).__name__}. "
                "Is the controller running (`corral up` / `corral controller`)?"
            ) from None
        if response.status_code != 200:
            _raise(response)
        return msgspec.json.decode(response.content, type=reply)

    async def _get(
        self, function: str, reply: type[T], http_timeout: float | None = None, /, **kwargs: Any
    ) -> T:
        result: T = await self.call(function, reply, http_timeout, **kwargs)
        return result

    def __getattr__(self, function: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if function.startswith("_"):
            raise AttributeError(function)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not args:
                return await self.call(function, **kwargs)
            # Positional arguments: Pydra's body, which the controller maps onto the
            # function's fields in order.
            key = kwargs.pop("idempotency_key", None)
            extra = {} if key is None else {"idempotency_key": key}
            return await self.call(function, args=list(args), kwargs=kwargs, **extra)

        return call

    # --- tasks --------------------------------------------------------------------------

    async def list_tasks(
        self, toplevel: bool = True, keys: Sequence[str] = ()
    ) -> list[m.TaskKeyView]:
        """The task keys the cluster can run (``toplevel``: without subtasks)."""
        return await self._get(
            "list_tasks", list[m.TaskKeyView], toplevel=toplevel, keys=list(keys)
        )

    async def queue_task(
        self,
        task_key: str,
        args: dict[str, Any] | None = None,
        priority: int = 5,
        labels: Sequence[str] = (),
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Queue task ``task_key`` with keyword arguments; returns the instance id.

        Arguments go in ``args`` (Pydra's ``queue_task(task_key, args={})``, positionally or
        by name) or as keyword arguments (``queue_task("T", foo="bar")``); a task argument
        named like a parameter here goes in ``args``. ``idempotency_key`` (default: a new
        uuid4) makes a repeat of this call within the controller's window answer the first
        instance instead of queueing another.

        Args:
            task_key: The task's key (``list_tasks``).
            args: The task's keyword arguments.
            priority: 0-9, lower runs first.
            labels: Only nodes with all these labels run it.
            max_attempts: Runs allowed when a worker is lost (default: the controller's).
            idempotency_key: Names this submission (default: a new uuid4).
            kwargs: More of the task's keyword arguments.

        Returns:
            The instance id.

        Raises:
            NotSerializable: an argument is not msgpack-able data (nothing is sent).
            InvalidArguments: the arguments do not fit the task's signature (``fields`` says
                what is wrong with each; nothing is queued).
            RemoteError: no node offers the task.
        """
        values = {**(args or {}), **kwargs}
        _check_args(values)
        reply: m.QueueReply = await self._get(
            "queue_task",
            m.QueueReply,
            task_key=task_key,
            args=values,
            priority=priority,
            labels=list(labels),
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
        )
        return reply.instance_id

    async def run_tasks(self, task_key: str, *args: dict[str, Any], **kwargs: Any) -> int:
        """The seed's spelling (``controller.run_tasks('MyTask', foo='bar')``) of
        :meth:`queue_task`; returns the instance id.

        Args:
            task_key: The task's key.
            args: At most one mapping of the task's keyword arguments.
            kwargs: The task's keyword arguments (and :meth:`queue_task`'s options).

        Returns:
            The instance id.

        Raises:
            NotSerializable: an argument is not msgpack-able data.
            InvalidArguments: the arguments do not fit the task's signature.
            RemoteError: no node offers the task.
            TypeError: more than one positional mapping.
        """
        if len(args) > 1:
            raise TypeError(
                f"run_tasks() takes the task key and at most one mapping of arguments "
                f"({len(args) + 1} positional arguments given)"
            )
        if args:
            return await self.queue_task(task_key, args[0], **kwargs)
        return await self.queue_task(task_key, **kwargs)

    async def queue_tasks(
        self,
        task_key: str,
        args: Sequence[dict[str, Any]],
        priority: int = 5,
        labels: Sequence[str] = (),
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Queue one instance per argument mapping in one call; returns their ids in order.

        Args:
            task_key: The task's key.
            args: One mapping of the task's keyword arguments per instance.
            priority: 0-9, lower runs first.
            labels: Only nodes with all these labels run them.
            max_attempts: Runs allowed when a worker is lost (default: the controller's).
            idempotency_key: Names this submission (default: a new uuid4); a repeat answers
                the first ids.

        Returns:
            The instance ids, in the order of ``args``.

        Raises:
            NotSerializable: an argument is not msgpack-able data.
            InvalidArguments: an instance's arguments do not fit the task's signature
                (``fields`` names them ``args[<i>].<name>``; nothing is queued).
            RemoteError: no node offers the task.
        """
        for values in args:
            _check_args(values)
        reply: m.QueueTasksReply = await self._get(
            "queue_tasks",
            m.QueueTasksReply,
            task_key=task_key,
            args=list(args),
            priority=priority,
            labels=list(labels),
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
        )
        return reply.instance_ids

    async def cancel_task(self, task_instance_id: int, force: bool = False) -> m.TaskView:
        """Cancel: dequeue, or stop (``force``: kill the worker after the grace period)."""
        return await self._get(
            "cancel_task", m.TaskView, task_instance_id=task_instance_id, force=force
        )

    async def wait_many(self, ids: Sequence[int], timeout: float = 60.0) -> list[m.TaskView]:
        """Wait until every instance has finished; returns them in order.

        Raises:
            Timeout: not all finished within ``timeout`` seconds.
        """
        return await self._get(
            "wait",
            list[m.TaskView],
            timeout + self.timeout,
            task_instance_ids=list(ids),
            timeout=timeout,
        )

    async def wait(self, task_instance_id: int, timeout: float = 60.0) -> m.TaskView:
        """Wait until the instance has finished (complete, failed or cancelled).

        Raises:
            Timeout: it did not finish within ``timeout`` seconds.
        """
        (view,) = await self.wait_many([task_instance_id], timeout)
        return view

    async def result(self, task_instance_id: int, timeout: float = 60.0) -> Any:
        """Wait for the instance and return its result.

        Raises:
            TaskFailed: it failed or was cancelled (``.instance`` has the error, traceback).
            Timeout: it did not finish within ``timeout`` seconds.
        """
        view = await self.wait(task_instance_id, timeout)
        if view.status != "complete":
            raise TaskFailed(f"task {view.id} ({view.key}) {view.status}: {view.error}", view)
        return view.result

    async def run_task(
        self,
        task_key: str,
        args: dict[str, Any] | None = None,
        timeout: float = 60.0,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> m.TaskView:
        """Queue a task and wait until it has finished, in one call; returns the instance.

        Args:
            task_key: The task's key.
            args: The task's keyword arguments (or pass them as keyword arguments).
            timeout: Seconds to wait for it to finish.
            idempotency_key: Names this submission (default: a new uuid4); a repeat waits
                for the first instance.
            kwargs: More of the task's keyword arguments.

        Returns:
            The finished instance.

        Raises:
            NotSerializable: an argument is not msgpack-able data.
            InvalidArguments: the arguments do not fit the task's signature (nothing runs).
            Timeout: it did not finish within ``timeout`` seconds.
        """
        values = {**(args or {}), **kwargs}
        _check_args(values)
        return await self._get(
            "run_task",
            m.TaskView,
            timeout + self.timeout,
            task_key=task_key,
            args=values,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    async def run(
        self,
        task_key: str,
        args: dict[str, Any] | None = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> Any:
        """Run a task (queue it and wait, in one call) and return its result.

        Args:
            task_key: The task's key.
            args: The task's keyword arguments (or pass them as keyword arguments).
            timeout: Seconds to wait for it to finish.
            kwargs: More of the task's keyword arguments.

        Returns:
            The task's result.

        Raises:
            InvalidArguments: the arguments do not fit the task's signature (nothing runs).
            TaskFailed: it failed or was cancelled.
            Timeout: it did not finish within ``timeout`` seconds.
        """
        view = await self.run_task(task_key, args, timeout=timeout, **kwargs)
        if view.status != "complete":
            raise TaskFailed(f"task {view.id} ({view.key}) {view.status}: {view.error}", view)
        return view.result

    async def list_queue(self, page: int = 1, per_page: int | None = None) -> m.TaskPage:
        """Queued instances, oldest first."""
        return await self._get("list_queue", m.TaskPage, page=page, per_page=per_page)

    async def list_running(self, page: int = 1, per_page: int | None = None) -> m.TaskPage:
        """Running instances, oldest first."""
        return await self._get("list_running", m.TaskPage, page=page, per_page=per_page)

    async def task_statuses(self) -> list[m.TaskStatusView]:
        """Status, start time and progress of every running instance."""
        return await self._get("task_statuses", list[m.TaskStatusView])

    async def task_history(self, key: str, page: int = 1, per_page: int = 10) -> m.TaskPage:
        """The instances of task ``key``, newest first, ``per_page`` a page."""
        return await self._get("task_history", m.TaskPage, key=key, page=page, per_page=per_page)

    async def task_history_detail(self, task_instance_id: int) -> m.TaskView:
        """One instance, with its attempts, result or error and traceback.

        Raises:
            NotFound: no such instance.
        """
        return await self._get("task_history_detail", m.TaskView, task_instance_id=task_instance_id)

    # --- nodes --------------------------------------------------------------------------

    async def node_list(self, page: int = 1, per_page: int | None = None) -> m.NodePage:
        """The nodes the controller knows, by name."""
        return await self._get("node_list", m.NodePage, page=page, per_page=per_page)

    async def node_detail(self, id: str) -> m.NodeView:
        """One node.

        Raises:
            NotFound: no such node.
        """
        return await self._get("node_detail", m.NodeView, id=id)

    async def node_edit(self, values: dict[str, Any]) -> m.NodeView:
        """Set ``labels`` or ``attributes`` of node ``values['id']`` as the controller keeps them.

        Raises:
            RemoteError: no id, or a field that cannot be set.
            NotFound: no such node.
        """
        return await self._get("node_edit", m.NodeView, values=values)

    async def node_status(self) -> list[m.NodeStatusView]:
        """Every node and its worker slots (idle, busy, not connected)."""
        return await self._get("node_status", list[m.NodeStatusView])

    async def connect(self) -> dict[str, int]:
        """Make the controller announce itself now, so waiting nodes join at once."""
        return await self._get("connect", dict[str, int])

    async def list_known_nodes(self) -> list[m.KnownNode]:
        """Nodes enrolled but never seen by the controller."""
        return await self._get("list_known_nodes", list[m.KnownNode])

    # --- fleet hygiene and task logs (Pydra's kill worker, delete node, logs) -------------

    async def kill_worker(self, node: str, slot: int = 0) -> m.KilledWorker:
        """Kill worker ``slot`` of ``node``: the task it runs fails (as after a
        crash), the node starts the slot again.

        Raises:
            NotFound: no such node.
            RemoteError: the node is not UP or has no such slot.
        """
        return await self._get("kill_worker", m.KilledWorker, node=node, slot=slot)

    async def node_delete(self, id: str) -> m.NodeDeleted:
        """Forget node ``id`` (not UP): registry, store, and its credentials revoked.

        Raises:
            NotFound: no such node.
            RemoteError: the node is UP.
        """
        return await self._get("node_delete", m.NodeDeleted, id=id)

    async def task_logs(self, task_instance_id: int) -> m.TaskLogsView:
        """What instance ``task_instance_id`` printed and ``ctx.log``-ged (bounded).

        Raises:
            NotFound: no such instance.
        """
        return await self._get("task_logs", m.TaskLogsView, task_instance_id=task_instance_id)


class Controller:
    """The blocking twin of :class:`AsyncController`: same methods, same arguments.

    Args:
        url: The API's URL; default from configuration.
        token: An API token; default ``CORRAL_API_TOKEN`` or the local admin token file.
        timeout: Seconds an HTTP call may take.
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
        from corral.sync import call

        self._call = call
        self._inner = call(_make(url, token, timeout, config))

    def __repr__(self) -> str:
        return f"<Controller {self._inner.url}>"

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._call(self._inner.close())

    def __getattr__(self, function: str) -> Callable[..., Any]:
        if function.startswith("_"):
            raise AttributeError(function)
        method = getattr(self._inner, function)
        if not callable(method):
            return method  # type: ignore[no-any-return]  # plain attributes: url, timeout

        mine = type(self).__name__

        def blocking(*args: Any, **kwargs: Any) -> Any:
            try:
                coro = method(*args, **kwargs)  # binds the arguments, runs nothing yet
            except TypeError as exc:  # say it of the class the caller used
                raise TypeError(str(exc).replace("AsyncController.", f"{mine}.")) from None
            return self._call(coro)

        blocking.__name__ = function
        blocking.__qualname__ = f"{mine}.{function}"
        blocking.__doc__ = getattr(method, "__doc__", None)
        with contextlib.suppress(TypeError, ValueError):
            blocking.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
        return blocking


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
        timeout: Seconds an HTTP call may take.
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

    def __repr__(self) -> str:
        return f"<WebController {self._inner.url}>"


async def _make(
    url: str | None, token: str | None, timeout: float, config: Config | None
) -> AsyncController:
    # Built on the portal loop: httpx binds its pool to the loop that first uses it.
    return AsyncController(url, token, timeout=timeout, config=config)
