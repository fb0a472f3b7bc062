"""What a record the database refused may be stored as instead, per kind of record.

The policy (docs/operations.md, "Poison-proof writes"):

================  =====================================================================
kind              when the database refuses it
================  =====================================================================
commands          refused: the sender gets the reason (with the command's audit entry)
nodes             text escaped; then stored without its attributes, host and version
transitions       text escaped; else refused (logged)
audit             text escaped; else refused (logged)
outcomes          text escaped; then kept with its state, output dropped, error saying so
task_instances    text escaped; then kept with its status, message, error, traceback,
                  history and logs replaced by a note saying so
================  =====================================================================

"Text escaped" is :func:`corral.core.text.escape`: every NUL in a string field or a nested
JSON value becomes the visible ``\\x00``. Text that comes from nodes (errors, tracebacks,
output, results) is so never lost to a NUL; names never reach the store with one (they are
refused at the edges).
"""

from __future__ import annotations

from typing import Any

import msgspec

from corral.core.text import escape

__all__ = ["record_versions", "task_versions"]

_INT32 = 2**31 - 1


def _struct_escaped(record: Any) -> Any:
    values = escape(msgspec.structs.asdict(record))
    return type(record)(**values)


def _int32(value: Any) -> Any:
    return value if isinstance(value, int) and -_INT32 - 1 <= value <= _INT32 else None


def _minimal(kind: str, record: Any, why: str) -> Any | None:
    note = escape(f"the store refused this record ({why}); its text was dropped")
    replace = msgspec.structs.replace
    if kind == "outcomes":
        return replace(
            record,
            result=None,
            error=note,
            exit_code=_int32(record.exit_code),
            stdout="",
            stderr="",
        )
    if kind == "nodes":
        return replace(
            record,
            attributes={},
            host="",
            version="",
            pid=_int32(record.pid) or 0,
            slots=_int32(record.slots) or 0,
        )
    return None


def record_versions(kind: str, record: Any, why: str) -> list[Any]:
    """The versions of a refused store record to try, in order (empty: refuse it).

    Args:
        kind: ``"nodes"``, ``"transitions"``, ``"audit"``, ``"commands"`` or ``"outcomes"``.
        record: The record (a msgspec struct of :mod:`corral.records`).
        why: What the database said, for a note in the stored version.

    Returns:
        Candidate replacements, best first.
    """
    if kind in ("commands", "keys"):
        return []  # a command, or the first answer to a keyed call: never altered
    versions = [_struct_escaped(record)]
    minimal = _minimal(kind, record, why)
    if minimal is not None:
        versions.append(_struct_escaped(minimal))
    return versions


def task_versions(row: dict[str, Any], why: str) -> list[dict[str, Any]]:
    """The versions of a refused task instance row to try, in order.

    Args:
        row: The instance as a dict of its columns.
        why: What the database said, for the stored error.

    Returns:
        The row escaped, then the row with its free text replaced by a note.
    """
    minimal = dict(row)
    minimal.update(
        message="",
        result=None,
        error=f"the store refused this instance's text ({why}); it was dropped",
        traceback="",
        history=[],
        logs="",
    )
    return [escape(row), escape(minimal)]
