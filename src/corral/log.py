"""Structured logs: one line per event, readable on a terminal, JSON when asked.

Code logs with the standard library and puts fields in ``extra``::

    log.info("node up", extra={"node": name, "host": host})

On a TTY that prints ``12:00:01 INFO  corral.controller node up node=web1 host=a``; with
``log_format = "json"`` (or when stderr is not a TTY and the format is ``auto``) it prints
``{"ts": ..., "level": "info", "logger": ..., "event": "node up", "node": "web1", ...}``.

Log files are rotated (``log_max_bytes``, ``log_backups``): ``log_file`` for a process's own
log, and :func:`rotating_file` for the files ``corral up`` writes its children's output to.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "rotating_file", "setup_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger event key=value …``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a line."""
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<5} {record.name} {record.getMessage()}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON line."""
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def rotating_file(path: Path, max_bytes: int, backups: int) -> logging.Handler:
    """A handler appending lines to ``path``, rotated at ``max_bytes`` (0: never) keeping
    ``backups`` older files (``path.1`` the newest); the directory is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )


def setup_logging(
    fmt: str = "auto",
    level: str = "info",
    *,
    file: str = "",
    max_bytes: int = 0,
    backups: int = 0,
) -> None:
    """Send corral's logs to stderr in ``fmt`` (auto, text or json) at ``level``.

    With ``file``, the logs go to that file instead (JSON unless ``fmt`` is text), rotated
    at ``max_bytes`` keeping ``backups`` older files.
    """
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() and not file else "json"
    handler: logging.Handler
    if file:
        handler = rotating_file(Path(file).expanduser(), max_bytes, backups)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("corral")
    for old in root.handlers:
        if isinstance(old, logging.FileHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
