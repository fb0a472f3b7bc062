"""Task signatures: what a node says of each task's parameters, and the controller's check.

Theory of operation: a node's worker describes every task it loaded (:func:`describe`): for
each parameter a caller passes (the worker fills ``ctx`` itself), its name, its kind, whether
it has a default, and its type hint as the JSON schema msgspec generates for it — ``None`` when
there is no hint or msgspec cannot describe it, and then that value is not checked. The node
sends these in its ``TaskHello``. The controller turns a description back into msgspec types
once per description (:class:`ArgsCheck`, shared by every node that sends the same one) and
:class:`Signatures` checks the arguments of a queue call against it before anything is stored:
missing, unknown and wrongly typed arguments come back together, one message per argument
(Pydra's per-field errors). A node that sends no description (an older one) leaves its keys
unchecked. Nothing here does I/O.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, Union

import msgspec

from corral.wire import TaskParam, TaskSignature

__all__ = ["ArgsCheck", "Signatures", "describe", "schema_type"]

_ARGUMENT = ("positional_or_keyword", "keyword_only")
_SIMPLE: dict[str, Any] = {
    "integer": int,
    "number": float,
    "string": str,
    "boolean": bool,
    "null": type(None),
}
#: JSON schema constraints carried back into msgspec (``pattern`` is left out on purpose: a
#: regular expression from a node is not run on the controller).
_META = {
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "multipleOf": "multiple_of",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_length",
    "maxItems": "max_length",
    "minProperties": "min_length",
    "maxProperties": "max_length",
}
_MAX_DEPTH = 12


# --- the node's side ------------------------------------------------------------------------


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # one names what the module imports only for type checkers: the others
        pass
    found = {}
    space = getattr(fn, "__globals__", {})
    for name, hint in getattr(fn, "__annotations__", {}).items():

        def one() -> None: ...

        one.__annotations__ = {name: hint}
        try:
            found[name] = typing.get_type_hints(one, globalns=space, include_extras=True)[name]
        except Exception:
            continue
    return found


def _schema(hint: Any) -> dict[str, Any] | None:
    if hint is inspect.Parameter.empty or hint is object:
        return None
    try:
        schema = msgspec.json.schema(hint)
    except Exception:  # a type msgspec does not know: its values are not checked
        return None
    return schema or None  # {} is Any: nothing to check


def _shown(hint: Any) -> str:
    if hint is inspect.Parameter.empty:
        return ""
    if isinstance(hint, str):
        return hint
    if inspect.isclass(hint) and not typing.get_args(hint):
        return hint.__qualname__
    return str(hint).replace("typing.", "")


def describe(fn: Callable[..., Any], skip: Iterable[str] = ("ctx",)) -> TaskSignature:
    """The parameters of task function ``fn`` that a caller passes.

    Args:
        fn: The task function.
        skip: Parameters the worker fills itself (``ctx``, when the task takes it).

    Returns:
        Its signature description, as a node sends it in ``TaskHello.signatures``.
    """
    hints = _hints(fn)
    left_out = set(skip)
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in left_out:
            continue
        hint = hints.get(p.name, p.annotation)
        params.append(
            TaskParam(
                name=p.name,
                kind=p.kind.name.lower(),
                required=p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD),
                type=_schema(hint),
                hint=_shown(hint),
            )
        )
    return TaskSignature(params=params)


# --- the controller's side ------------------------------------------------------------------


def _meta(schema: Mapping[str, Any]) -> msgspec.Meta | None:
    found = {_META[k]: v for k, v in schema.items() if k in _META}
    if not found:
        return None
    try:
        return msgspec.Meta(**found)
    except (TypeError, ValueError):
        return None


def _with_meta(base: Any, schema: Mapping[str, Any]) -> Any:
    meta = _meta(schema)
    return base if meta is None else Annotated[base, meta]


def _union(options: list[Any]) -> Any:
    if any(o is Any for o in options):
        return Any
    kind = options[0] if len(options) == 1 else Union[tuple(options)]  # noqa: UP007
    try:
        msgspec.msgpack.Decoder(kind)  # a union msgspec cannot check (two object types...)
    except TypeError:
        return Any
    return kind


def schema_type(schema: Mapping[str, Any] | None, depth: int = 0) -> Any:
    """The msgspec type that checks what ``schema`` (a JSON schema msgspec made) describes.

    Constructs it cannot check, and unknown ones, become ``Any`` (not checked).

    Args:
        schema: A JSON schema, with its ``$defs``; ``None`` for no hint.
        depth: How deep this is in the schema (deeper than 12 is not checked).

    Returns:
        A type for ``msgspec.convert``.
    """
    if not schema:
        return Any
    defs = schema.get("$defs", {})
    return _type(schema, defs if isinstance(defs, dict) else {}, depth)


def _type(schema: Any, defs: Mapping[str, Any], depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return Any
    if isinstance(ref := schema.get("$ref"), str):
        return _type(defs.get(ref.rsplit("/", 1)[-1]), defs, depth + 1)
    if isinstance(any_of := schema.get("anyOf"), list) and any_of:
        return _union([_type(s, defs, depth + 1) for s in any_of])
    for word in ("enum", "const"):
        if word in schema:
            values = schema[word] if word == "enum" else [schema[word]]
            if isinstance(values, list) and values:
                if all(isinstance(v, str) for v in values) or all(
                    isinstance(v, int) and not isinstance(v, bool) for v in values
                ):
                    return Literal[tuple(values)]
            return Any
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([_type({"type": k}, defs, depth + 1) for k in kind] or [Any])
    if kind == "array":
        items = schema.get("items")
        inner = _type(items, defs, depth + 1) if isinstance(items, Mapping) else Any
        return _with_meta(list[inner], schema)  # type: ignore[valid-type]
    if kind == "object":
        more = schema.get("additionalProperties")
        inner = _type(more, defs, depth + 1) if isinstance(more, Mapping) else Any
        return _with_meta(dict[str, inner], schema)  # type: ignore[valid-type]
    if isinstance(kind, str) and kind in _SIMPLE:
        return _with_meta(_SIMPLE[kind], schema)
    return Any


def _say(exc: msgspec.ValidationError, name: str) -> str:
    """msgspec's message about one value, said of argument ``name``."""
    text, _, where = str(exc).partition(" - at `$")
    text = text.replace("`", "")
    text = text[:1].lower() + text[1:]
    return f"{text} at {name}{where.rstrip('`')}" if where else text


class ArgsCheck:
    """The check of one task signature, its types built once.

    Args:
        key: The task key (for messages).
        signature: What the node said of the task's parameters.
    """

    def __init__(self, key: str, signature: TaskSignature) -> None:
        self.key = key
        params = signature.params
        self.names = [p.name for p in params if p.kind in _ARGUMENT]
        self.known = frozenset(self.names)
        self.required = [p.name for p in params if p.kind in _ARGUMENT and p.required]
        self.positional_only = {p.name for p in params if p.kind == "positional_only"}
        rest = [p for p in params if p.kind == "var_keyword"]
        self.open = bool(rest)
        types = {p.name: schema_type(p.type) for p in params if p.kind in _ARGUMENT}
        self.types = {name: t for name, t in types.items() if t is not Any}
        self.rest_type = schema_type(rest[0].type) if rest else Any
        self.unusable = [p.name for p in params if p.kind == "positional_only" and p.required]

    def __repr__(self) -> str:
        return f"<ArgsCheck {self.key!r} ({', '.join(self.names)})>"

    def _unknown(self, name: str) -> str:
        if name in self.positional_only:
            return "positional-only in the task function: it cannot be passed by name"
        takes = ", ".join(self.names) or "no arguments"
        return f"unknown argument; task {self.key!r} takes {takes}"

    def errors(self, args: Mapping[str, Any]) -> dict[str, str]:
        """What is wrong with ``args`` as this task's keyword arguments, by argument.

        Args:
            args: The keyword arguments a caller passes.

        Returns:
            Argument name -> what is wrong with it; empty when nothing is.
        """
        out: dict[str, str] = {}
        for name in self.unusable:
            out[name] = (
                "the task function takes it positionally only, and tasks are called with "
                "keyword arguments: make it an ordinary parameter"
            )
        for name, value in args.items():
            kind = self.types.get(name)
            if kind is None:
                if name in self.known:
                    continue
                if not self.open:
                    out[name] = self._unknown(name)
                    continue
                kind = self.rest_type
                if kind is Any:
                    continue
            try:
                msgspec.convert(value, kind)
            except msgspec.ValidationError as exc:
                out[name] = _say(exc, name)
        for name in self.required:
            if name not in args:
                out[name] = "missing required argument"
        return out


class Signatures:
    """Every task key's signatures, as the nodes that offer it last described them.

    A key is checked when every node that offered it described it; a call passes if it fits
    one of the signatures (nodes running different versions of a task may differ).
    """

    def __init__(self) -> None:
        #: key -> node -> its check (None: that node did not describe the key)
        self._by_key: dict[str, dict[str, ArgsCheck | None]] = {}
        #: the checks built, by key and description (shared between nodes)
        self._built: dict[tuple[str, bytes], ArgsCheck] = {}

    def __repr__(self) -> str:
        return f"<Signatures keys={len(self._by_key)} built={len(self._built)}>"

    def offer(self, node: str, keys: Iterable[str], described: Mapping[str, TaskSignature]) -> None:
        """Record what ``node`` said in its hello: the keys it runs and their signatures.

        Args:
            node: The node's name.
            keys: Every key it offers.
            described: The signatures it sent (a key missing here is not checked).
        """
        offered = set(keys)
        for key, nodes in self._by_key.items():
            if key not in offered:
                nodes.pop(node, None)
        for key in offered:
            signature = described.get(key)
            check = None
            if signature is not None:
                ident = (key, msgspec.msgpack.encode(signature))
                check = self._built.get(ident)
                if check is None:
                    check = self._built[ident] = ArgsCheck(key, signature)
            self._by_key.setdefault(key, {})[node] = check

    def check(self, key: str, args: Mapping[str, Any]) -> dict[str, str]:
        """What is wrong with ``args`` for task ``key``, by argument (empty: nothing, or the
        key is not checked).

        Args:
            key: The task key.
            args: The keyword arguments of one instance.

        Returns:
            Argument name -> what is wrong with it.
        """
        nodes = self._by_key.get(key)
        if not nodes:
            return {}
        first: dict[str, str] | None = None
        seen: set[int] = set()
        for check in nodes.values():
            if check is None:
                return {}
            if id(check) in seen:
                continue
            seen.add(id(check))
            errors = check.errors(args)
            if not errors:
                return {}
            first = errors if first is None else first
        return first or {}
