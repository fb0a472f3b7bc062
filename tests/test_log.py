"""Structured logs: one line per event, fields from ``extra``."""

from __future__ import annotations

import json
import logging

from corral.log import JsonFormatter, TextFormatter


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
