"""One error tree: every error corral defines is a CorralError with a Pydra code and an HTTP
status, and crosses HTTP and the bus as the same class."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import re

import msgspec
import pytest

import corral
from conftest import scaled
from corral import api_models as m
from corral import bus, errors, subjects, wire
from corral.api_client import AsyncController
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import CorralError, NotFound, UnknownError
from corral.node import Node
from tasks_fixtures import api, node  # noqa: F401 - fixtures

#: Old names kept as the same class object.
ALIASES = {
    "ControllerError": "CorralError",
    "RemoteError": "Refused",
    "AuthenticationFailed": "AuthError",
    "Disconnected": "ControllerUnavailable",
}
PYDRA_CODES = {-1, -2, -3, -4, -5, -6}


def tree() -> list[type[CorralError]]:
    """Every class of the tree (each once, aliases folded)."""
    seen: dict[type[CorralError], None] = {}
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, CorralError):
            seen[value] = None
    return list(seen)


def every_exception_class() -> dict[str, type[BaseException]]:
    """Every exception class defined anywhere in the corral package, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(corral.__path__, "corral."):
        if info.name.endswith("__main__"):
            continue  # running it runs the CLI
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("corral")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(errors).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == "corral.errors"
    }
    assert public - set(errors.__all__) == set()
    assert [n for n in errors.__all__ if not hasattr(errors, n)] == []
    assert sorted(errors.__all__) == errors.__all__ and len(set(errors.__all__)) == len(
        errors.__all__
    )


def test_every_public_name_of_the_package_is_in_its_all() -> None:
    import types

    public = {
        name
        for name, value in vars(corral).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "TYPE_CHECKING"
    }
    assert public - set(corral.__all__) == set()
    assert [n for n in corral.__all__ if not hasattr(corral, n)] == []
    # Every error the package exports is the class of the one tree, not a copy.
    for name in corral.__all__:
        value = getattr(corral, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, CorralError) and getattr(errors, name) is value, name


def test_every_exception_corral_defines_is_in_the_tree() -> None:
    classes = every_exception_class()
    assert len(classes) > 40
    # A cancellation signal (an asyncio.CancelledError that says more) is control flow, not an
    # error: under CorralError, `except CorralError` would swallow a cancellation.
    outside = {
        q
        for q, c in classes.items()
        if not issubclass(c, CorralError) and not issubclass(c, asyncio.CancelledError)
    }
    assert outside == set(), f"not under CorralError: {outside}"
    elsewhere = {
        q
        for q, c in classes.items()
        if c.__module__ != "corral.errors"
        and getattr(errors, c.__name__, None) is not c
        and not issubclass(c, asyncio.CancelledError)
    }
    assert elsewhere == set(), f"define these in corral.errors: {elsewhere}"


def test_old_names_are_the_same_class() -> None:
    for old, new in ALIASES.items():
        assert getattr(errors, old) is getattr(errors, new), old
    assert corral.ControllerError is CorralError and corral.AuthError is errors.AuthenticationFailed


@pytest.mark.parametrize("cls", tree(), ids=lambda c: c.__name__)
def test_each_class_carries_a_pydra_code_and_an_http_status(cls: type[CorralError]) -> None:
    assert cls.code in PYDRA_CODES
    assert 400 <= cls.status <= 599
    assert cls.__doc__ and cls.reply_code
    exc = cls("boom")
    assert (exc.code, exc.status, str(exc)) == (cls.code, cls.status, "boom")


def sample(cls: type[CorralError]) -> CorralError:
    """An instance with whatever extra the class carries set."""
    exc = cls("what went wrong, and what to do")
    extras = {"fields": {"count": "expected int, got str"}, "retry_after": 2.5, "step": 7}
    for name, value in extras.items():
        if hasattr(exc, name):
            setattr(exc, name, value)
    return exc


def extras(exc: BaseException) -> tuple[object, ...]:
    return tuple(getattr(exc, n, None) for n in ("fields", "retry_after", "step"))


@pytest.mark.parametrize("cls", tree(), ids=lambda c: c.__name__)
def test_each_class_round_trips_over_http_and_the_bus(cls: type[CorralError]) -> None:
    exc = sample(cls)
    # HTTP: (status, body) as the API sends it, decoded as the client decodes it.
    status, body = errors.http_error(exc)
    sent = m.ErrorBody(**msgspec.json.decode(msgspec.json.encode(body)))
    again = errors.from_wire(
        sent.kind,
        sent.error,
        code=sent.code,
        status=status,
        fields=sent.fields,
        retry_after=sent.retry_after,
        step=sent.step,
    )
    assert (type(again), str(again), again.status, extras(again)) == (
        cls,
        str(exc),
        cls.status,
        extras(exc),
    )
    # The bus: an ErrorReply through encode and decode_reply.
    data = wire.encode(wire.error_reply(exc))
    with pytest.raises(cls) as raised:
        wire.decode_reply(data, wire.Ok, wire.HEADERS)
    assert type(raised.value) is cls and str(raised.value) == str(exc)
    assert extras(raised.value) == extras(exc)


def test_peers_that_send_no_kind_are_understood_by_code() -> None:
    cases = [
        (wire.ErrorReply(code="duplicate-name", error="x"), errors.DuplicateName),
        (wire.ErrorReply(code="usage", error="x"), errors.UsageError),
        (wire.ErrorReply(code="agent-stopped", error="x"), errors.NoSuchAgent),
        (wire.ErrorReply(code="something-new", error="x"), errors.Refused),
    ]
    for reply, cls in cases:
        with pytest.raises(cls) as raised:
            wire.raise_for_error(reply)
        assert type(raised.value) is cls
    retry = errors.from_wire("", "later", code="retry", retry_after=3.0)
    assert isinstance(retry, errors.RetryLater) and retry.retry_after == 3.0
    by_http = {
        (-1, 403): errors.Forbidden,
        (-1, 401): errors.AuthError,
        (-2, 503): errors.Disconnected,
        (-3, 404): errors.NotFound,
        (-3, 400): errors.RemoteError,
        (-3, 504): errors.Timeout,
        (-4, 401): errors.NoKey,
        (-5, 500): errors.UnknownError,
        (-6, 405): errors.FunctionNotFound,
    }
    for (code, status), cls in by_http.items():
        exc = errors.from_wire("", "x", code=code, status=status)
        assert type(exc) is cls and exc.status == status, (code, status)
    fields = errors.from_wire("", "x", code=-3, status=422, fields={"a": "no"})
    assert isinstance(fields, errors.InvalidArguments) and fields.fields == {"a": "no"}


def test_a_foreign_exception_is_an_unknown_error_naming_its_type() -> None:
    status, body = errors.http_error(KeyError("k"))
    assert status == 500 and body == {"code": -5, "error": "KeyError: 'k'", "kind": "UnknownError"}
    assert wire.error_reply(ZeroDivisionError("no")).kind == "UnknownError"


def test_the_docstring_tree_is_the_class_tree() -> None:
    doc = errors.__doc__ or ""
    drawn: dict[str, tuple[str | None, int, int]] = {}
    stack: list[str] = []
    for line in doc.splitlines():
        found = re.match(r"^    ([│ ]*(?:├── |└── )?)(\w+)\s+(-\d) (\d{3})  ", line)
        if found is None:
            continue
        depth = len(found.group(1)) // 4
        name = found.group(2)
        del stack[depth:]
        drawn[name] = (stack[-1] if stack else None, int(found.group(3)), int(found.group(4)))
        stack.append(name)
    actual = {}
    for cls in tree():
        parent = next((b for b in cls.__bases__ if issubclass(b, CorralError)), None)
        actual[cls.__name__] = (parent and parent.__name__, cls.code, cls.status)
    assert drawn == actual


# --- the same failure, the same class, on both transports ---------------------------------


async def test_an_unknown_id_raises_the_same_class_over_http_and_the_bus(
    controller: Controller,
    config: Config,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    # A task instance id nobody holds: HTTP (an operator) and the bus (a node mapping
    # subtasks under a lease no running task holds) both raise NotFound.
    with pytest.raises(NotFound, match="no task instance 987654") as over_http:
        await api.cancel_task(987654)
    assert over_http.value.status == 404
    with pytest.raises(NotFound, match="no task instance 987654"):
        await api.task_history_detail(987654)
    assert node.nc is not None
    with pytest.raises(NotFound, match="no running task holds lease") as over_bus:
        await bus.request(
            node.nc,
            subjects.node_in("w1", subjects.TASK_MAP_VERB),
            wire.TaskMap(lease="no-such-lease", key="echo", args=[]),
            wire.Ok,
            timeout=scaled(5),
        )
    assert type(over_bus.value) is type(over_http.value)
    # A command serial nobody sent: the same NotFound from the API and from the bus client.
    with pytest.raises(NotFound, match="no command #424242") as http_command:
        await api.call("command_detail", wire.CommandView, serial=424242)
    async with await Client.connect(config) as client:
        with pytest.raises(NotFound, match="no command #424242") as bus_command:
            await client.command_detail(424242)
    assert type(http_command.value) is type(bus_command.value) is NotFound
    # And what no class names reaches the client as an UnknownError, not a bare exception.
    assert isinstance(errors.from_wire("NoSuchClass", "x", code=-5), UnknownError)
