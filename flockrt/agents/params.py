"""The parameters of a capability handler, checked against its signature before it runs.

A capability request's parameters come from outside (NATS, the MCP gateway, another agent), so
a handler must not be the first to find that one is unknown, missing or of the wrong type: the
requester would get a Python internal (``TypeError("TextAgent.analyze() got an unexpected
keyword argument 'bogus'")``, ``AttributeError("'int' object has no attribute 'split'")``)
and the handler might have done half its work. :class:`Parameters`, built once per handler from
its signature and type hints, answers instead with an
:class:`~flockrt.errors.InvalidParameters` whose message names the parameter
("text-analysis has no parameter 'bogus' (it takes: text)", "parameter 'text' of
text-analysis must be a string, not an integer").

What it costs a well-formed call: for a handler with type hints, one ``msgspec.convert`` of the
parameters into a Struct made from them (done in C, a fraction of a microsecond); for a handler
without any, nothing (names are checked by the call itself, and only a call that fails is
looked at again). Hints msgspec cannot check (a class of the handler's own, a TypedDict, a
name imported only for type checkers) are not checked: the handler gets such a value as it came.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from flockrt.errors import InvalidParameters

__all__ = ["Parameters", "json_schema", "plain"]

_SCALARS: frozenset[Any] = frozenset({str, int, float, bool, type(None), None, Any, object})
_CONTAINERS: frozenset[Any] = frozenset({list, dict, tuple, set, frozenset})
_UNIONS: frozenset[Any] = frozenset({typing.Union, types.UnionType})

_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "null": "null",
    "array": "an array",
    "object": "an object",
    "bytes": "bytes",
}
_convert = msgspec.convert  # the hot path's one call, looked up once
_Invalid = msgspec.ValidationError

_EXPECTED = re.compile(r"^Expected `(?P<expected>[^`]*)`, got `(?P<got>[^`]*)`")
_AT = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$")


class Parameters:
    """How capability ``name``'s handler takes its parameters, and the check of a request's.

    Args:
        name: The capability (it names the parameters' owner in messages).
        method: The handler, bound (``self`` is not a parameter).
    """

    __slots__ = (
        "_defaults",
        "_first",
        "_first_name",
        "_hints",
        "_names",
        "_positional",
        "_required",
        "_returns",
        "_struct",
        "_takes",
        "_takes_any",
        "name",
    )

    def __init__(self, name: str, method: Callable[..., Any]) -> None:
        self.name = name
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):  # a callable without one: nothing to check against
            signature = inspect.Signature([inspect.Parameter("parameters", inspect.Parameter.VAR_KEYWORD)])
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = [p for p in signature.parameters.values() if p.kind in keyword]
        kinds = {p.kind for p in signature.parameters.values()}
        self._takes_any = inspect.Parameter.VAR_KEYWORD in kinds
        self._names = tuple(p.name for p in params)
        takes_value = (inspect.Parameter.POSITIONAL_ONLY, *keyword)
        valued = [p for p in signature.parameters.values() if p.kind in takes_value]
        self._takes = ", ".join(p.name for p in valued) or "no parameters"
        self._required = tuple(p.name for p in valued if p.default is inspect.Parameter.empty)
        positional = [
            p
            for p in signature.parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        self._positional = bool(positional) or inspect.Parameter.VAR_POSITIONAL in kinds
        hints = {p.name: _checkable(p.annotation, method) for p in signature.parameters.values()}
        self._first_name = positional[0].name if positional else None
        first = hints[positional[0].name] if positional else Any
        self._first: Any = None if first is Any else first
        self._hints = hints
        self._defaults = {p.name: p.default for p in params}
        self._returns = signature.return_annotation
        self._struct: type[msgspec.Struct] | None = None
        if any(hints[p.name] is not Any for p in params):
            fields = [(p.name, hints[p.name], msgspec.field(default=None)) for p in params]
            forbid = not self._takes_any
            try:
                self._struct = msgspec.defstruct(
                    "Parameters", fields, kw_only=True, forbid_unknown_fields=forbid
                )
            except (TypeError, ValueError):  # a name or type msgspec refuses: names checked only
                self._struct = None

    def call(self, method: Callable[..., Coroutine[Any, Any, Any]], payload: Any) -> Coroutine[Any, Any, Any]:
        """The coroutine of ``method`` for ``payload`` (keyword arguments when it is a JSON
        object, else one argument, or none), not started.

        Raises:
            InvalidParameters: ``payload`` does not fit the handler's signature.
        """
        if isinstance(payload, dict):
            struct = self._struct
            if struct is not None:
                try:
                    _convert(payload, struct)
                except _Invalid as exc:
                    raise self._invalid(str(exc), payload) from None
            try:
                return method(**payload)
            except TypeError:  # binding failed (an async def's body has not run), or not ours
                problem = self._names_problem(payload)
                if problem is None:
                    raise
                raise problem from None
        if payload is None:
            try:
                return method()
            except TypeError:
                problem = self._names_problem({})
                if problem is None:
                    raise
                raise problem from None
        if self._first is not None:
            try:
                _convert(payload, self._first)
            except _Invalid as exc:
                raise self._invalid(str(exc), payload, first=True) from None
        try:
            return method(payload)
        except TypeError:
            if not self._positional:
                text = f"{self.name} takes no value; send its parameters as an object"
                raise InvalidParameters(self.name, None, text) from None
            problem = self._names_problem({self._first_name: payload})
            if problem is None:
                raise
            raise problem from None

    # ------------------------------------------------------------------ schemas

    def input_schema(self) -> dict[str, Any]:
        """A JSON Schema of the parameters object, from the handler's signature: each parameter
        a property typed by its hint (untyped: any value), those without a default required,
        others refused unless the handler takes ``**kwargs``. An optional parameter is its plain
        type, not a union with null, so generic clients read it."""
        properties: dict[str, Any] = {}
        defs: dict[str, Any] = {}
        for name in self._names:
            hint = self._hints[name]
            prop = {} if hint is Any else json_schema(hint, defs)
            default = self._defaults[name]
            if default is not inspect.Parameter.empty and _plain_json(default):
                prop["default"] = default
            properties[name] = prop
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        required = [name for name in self._required if name in properties]
        if required:
            schema["required"] = required
        if not self._takes_any:
            schema["additionalProperties"] = False
        if defs:
            schema["$defs"] = defs
        return schema

    def output_schema(self, method: Callable[..., Any]) -> dict[str, Any] | None:
        """A JSON Schema of what the handler returns, or None when its return is not typed."""
        returns = _checkable(self._returns, method)
        if returns is Any or returns is None or returns is type(None):
            return None
        return json_schema(returns, {})

    # ------------------------------------------------------------------ messages

    def _names_problem(self, payload: dict[Any, Any]) -> InvalidParameters | None:
        """What is wrong with the names in ``payload``, or None (the TypeError was not ours)."""
        if not self._takes_any:
            for key in payload:
                if key not in self._names:
                    return self._unknown(str(key))
        for required in self._required:
            if required not in payload:
                return self._missing(required)
        return None

    def _unknown(self, key: str) -> InvalidParameters:
        return InvalidParameters(
            self.name, key, f"{self.name} has no parameter {key!r} (it takes: {self._takes})"
        )

    def _missing(self, key: str) -> InvalidParameters:
        return InvalidParameters(
            self.name, key, f"{self.name} needs parameter {key!r} (it takes: {self._takes})"
        )

    def _invalid(self, error: str, payload: Any, *, first: bool = False) -> InvalidParameters:
        """msgspec's validation error as a sentence naming the parameter."""
        if error.startswith("Object contains unknown field `"):
            return self._unknown(error.split("`")[1])
        if error.startswith("Object missing required field `"):
            return self._missing(error.split("`")[1])
        match = _AT.match(error)
        reason, path = (match["reason"], match["path"]) if match else (error, "")
        if first:  # the one value of the request stands for the handler's first parameter
            parameter = self._names[0] if self._names else "value"
            path = f".{parameter}{path}"
        head = re.match(r"^\.(?P<name>[A-Za-z_]\w*)(?P<rest>.*)$", path)
        if head is None:  # not about one parameter
            text = f"the parameters of {self.name} are invalid: {_words(reason)}"
            return InvalidParameters(self.name, None, text)
        name, rest = head["name"], head["rest"]
        expected = _EXPECTED.match(reason)
        hint = self._hints.get(name)
        if not rest and expected is not None:
            need, got = _type_words(expected["expected"]), _type_words(expected["got"])
            text = f"parameter {name!r} of {self.name} must be {need}, not {got}"
        elif not rest and typing.get_origin(hint) is typing.Literal:
            choices = ", ".join(repr(choice) for choice in typing.get_args(hint))
            text = (
                f"parameter {name!r} of {self.name} must be one of {choices}, not {_value(payload, name)!r}"
            )
        else:
            where = f" at {name}{rest}" if rest else ""
            text = f"parameter {name!r} of {self.name} is invalid{where}: {_words(reason)}"
        return InvalidParameters(self.name, name, text)


def json_schema(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of values of ``hint``, in the plain form generic MCP clients read:
    ``X | None`` is X (null is the absence of a value), named structs go to ``defs``.
    """
    (schema,), components = msgspec.json.schema_components([hint], ref_template="#/$defs/{name}")
    for component in components.values():
        component.pop("title", None)
    defs.update(components)
    return plain(schema)


def plain(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the ``{type: null}`` option of every ``anyOf`` dropped, recursively:
    ``anyOf: [X, {type: null}]`` becomes X (``anyOf: [X, Y, {type: null}]``, ``anyOf: [X, Y]``).
    A generic client says null by leaving an optional field out."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [option for option in options if option != {"type": "null"}]
        if rest and len(rest) < len(options):
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            if len(rest) == 1:
                merged.update(plain(rest[0]))
            else:
                merged["anyOf"] = [plain(option) for option in rest]
            if merged.get("default", 0) is None:  # "absent" is how a generic client says null
                del merged["default"]
            return merged
    out = dict(schema)
    choices = out.get("enum")
    if (
        "type" not in out
        and isinstance(choices, list)
        and choices
        and all(isinstance(c, str) for c in choices)
    ):
        out["type"] = "string"
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: plain(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = plain(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = plain(out["additionalProperties"])
    if isinstance(options, list):
        out["anyOf"] = [plain(option) for option in options]
    return out


def _plain_json(value: Any) -> bool:
    return type(value) in (str, int, float, bool)


def _value(payload: Any, name: str) -> Any:
    return payload.get(name) if isinstance(payload, dict) else payload


def _type_words(spec: str) -> str:
    """``str | null`` as "a string or null"."""
    return " or ".join(_WORDS.get(part.strip(), part.strip()) for part in spec.split("|"))


def _words(reason: str) -> str:
    """msgspec's reason with its type names in words ("expected an integer, not a string")."""
    expected = _EXPECTED.match(reason)
    if expected is None:
        return reason[:1].lower() + reason[1:]
    return f"expected {_type_words(expected['expected'])}, not {_type_words(expected['got'])}"


def _checkable(annotation: Any, method: Callable[..., Any]) -> Any:
    """``annotation`` when msgspec can check it exactly as the handler declared it, else Any
    (not checked): unannotated, a string that does not resolve (a name imported for type
    checkers only), or a type of the handler's own that msgspec would check by other rules."""
    if annotation is inspect.Parameter.empty:
        return Any
    if isinstance(annotation, str):
        function = getattr(method, "__func__", method)
        namespace = getattr(function, "__globals__", {})
        try:
            annotation = eval(annotation, dict(namespace))  # the handler's own annotation
        except Exception:  # a name imported under TYPE_CHECKING, a typo: not checked
            return Any
    return annotation if _known(annotation) else Any


def _known(hint: Any) -> bool:
    if hint in _SCALARS or hint in _CONTAINERS:
        return True
    if isinstance(hint, type):
        return issubclass(hint, msgspec.Struct | enum.Enum)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return True
    if origin in _UNIONS or origin in _CONTAINERS:
        return all(arg is Ellipsis or _known(arg) for arg in typing.get_args(hint))
    return False
