"""Loading handler modules, by plain calls."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.node import handlers as handlers_module
from corral.node.handlers import Handlers, load_handlers, ping


def test_a_module_beside_the_working_directory_is_found_without_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lab_bench_handlers.py").write_text(
        "from corral import command\n\n@command\ndef warm_up(minutes: int = 5) -> int:\n"
        "    return minutes\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    load_handlers(["lab_bench_handlers"])
    handlers = Handlers.collect(tmp_path)
    assert handlers.commands["warm_up"](minutes=2) == 2
    assert "ping" in handlers.commands  # the built-in


def test_a_module_that_fails_to_import_names_itself_and_the_error() -> None:
    with pytest.raises(ConfigError, match="cannot load handler module 'no_such_mod_xyz'"):
        load_handlers(["no_such_mod_xyz"])


@pytest.mark.parametrize(
    ("source", "handler", "builtin"),
    [
        ("@command\ndef ping() -> str:\n    return 'mine'\n", "ping", "COMMAND 'ping'"),
        (
            "@command(name='ping')\ndef my_ping() -> str:\n    return 'mine'\n",
            "my_ping",
            "COMMAND 'ping'",
        ),
        (
            "@message_type('shell')\ndef sh(args, data):\n    return 'mine'\n",
            "sh",
            "message type 'shell'",
        ),
    ],
)
def test_a_handler_that_shadows_a_builtin_is_refused_at_load_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, handler: str, builtin: str
) -> None:
    module = f"shadowing_{handler}_handlers"
    (tmp_path / f"{module}.py").write_text("from corral import command, message_type\n\n" + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_handlers([module])
    text = str(caught.value)
    assert f"cannot load handler module {module!r}" in text
    assert f"handler {handler} in module {module!r}" in text and builtin in text
    assert "built-in" in text and "another" in text
    assert Handlers.collect(tmp_path).commands["ping"] is ping  # the built-in still answers


def test_a_message_type_differing_from_a_builtin_kind_by_case_is_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "seer_get_handlers.py").write_text(
        "from corral import message_type\n\n@message_type('GET')\n"
        "def seer_get(args, data):\n    return 'seer'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(handlers_module, "_TYPES", {})  # leave no registration behind
    load_handlers(["seer_get_handlers"])  # kinds are case-sensitive: "GET" is not "get"
    assert Handlers.collect(tmp_path).types["GET"]({}, b"") == "seer"
