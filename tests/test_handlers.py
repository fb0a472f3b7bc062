"""Loading handler modules, by plain calls."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.node.handlers import Handlers, load_handlers


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
