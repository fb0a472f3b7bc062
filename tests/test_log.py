"""Structured logs: one line per event, fields from ``extra``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from conftest import scaled
from corral import procs
from corral.config import load_config
from corral.errors import ConfigError
from corral.log import JsonFormatter, TextFormatter, setup_logging


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("corral.test", logging.INFO, __file__, 1, "node %s", ("up",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_the_event_and_its_fields() -> None:
    line = JsonFormatter().format(record(node="web1", was="DOWN"))
    data = json.loads(line)
    assert data["event"] == "node up" and data["level"] == "info"
    assert data["node"] == "web1" and data["was"] == "DOWN" and data["logger"] == "corral.test"
    assert "\n" not in line


def test_text_lines_read_as_key_values() -> None:
    line = TextFormatter().format(record(node="web1"))
    assert line.endswith("INFO  corral.test node up node=web1")


def test_a_log_file_rotates_at_the_configured_size(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "corral.log"
    setup_logging("json", "info", file=str(path), max_bytes=400, backups=2)
    try:
        log = logging.getLogger("corral.test")
        for i in range(60):
            log.info("line %d", i, extra={"pad": "x" * 20})
    finally:
        setup_logging()  # back to stderr; closes the file
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["corral.log", "corral.log.1", "corral.log.2"]  # two backups, no more
    for p in path.parent.iterdir():
        assert 0 < p.stat().st_size <= 400
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["event"] == "line 59"


def test_a_childs_output_log_rotates(tmp_path: Path) -> None:
    """`corral up` writes its children's output through procs.spawn(rotate=...)."""
    path = tmp_path / "child.log"
    code = "for i in range(300): print(f'line {i:03d} ' + 'y' * 40)"
    proc = procs.spawn([sys.executable, "-c", code], log=path, rotate=(2000, 3))
    assert proc.wait(scaled(30)) == 0
    procs.wait_output(proc)  # every line the child printed is in its log
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["child.log", "child.log.1", "child.log.2", "child.log.3"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert path.read_text().splitlines()[-1].startswith("line 299 ")


def test_rotation_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="log_backups must be at least 0"):
        load_config({"log_backups": -1}, env={})
    config, _ = load_config({}, env={"CORRAL_LOG_MAX_BYTES": "1000"})
    assert (config.log_max_bytes, config.log_backups) == (1000, 5)
