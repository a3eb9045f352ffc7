"""The JMESPath dialect used to read values out of payloads.

Standard JMESPath plus the transforms of `router.expr.functions`, registered as
functions, so a mapping reads `upper(properties.currency)` rather than embedding
logic in strings. Expressions are compiled once at config load; unknown functions and
wrong arity are load-time errors, not production surprises.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jmespath
from jmespath import functions as jp_functions
from jmespath.exceptions import JMESPathError

from router.expr import functions as fx
from router.expr.jmes_compile import compile_ast

# name -> (python function, min args, max args); None = variadic
_CUSTOM: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "lower": (fx.lower, 1, 1),
    "upper": (fx.upper, 1, 1),
    "trim": (fx.trim, 1, 1),
    "str": (fx.to_str, 1, 1),
    "number": (fx.to_number, 1, 1),
    "integer": (fx.to_int, 1, 1),
    "money": (fx.money, 1, 2),
    "iso_time": (fx.iso_time, 1, 1),
    "unix_seconds": (fx.unix_seconds, 1, 1),
    "unix_millis": (fx.unix_millis, 1, 1),
    "query_param": (fx.query_param, 2, 2),
    "attr": (fx.attr, 2, 2),
    "split_tail": (fx.split_tail, 3, 3),
    "regex_group": (fx.regex_group, 2, 2),
    "with_index": (fx.with_index, 1, 1),
    "first": (fx.first, 1, 1),
    "multiply": (fx.multiply, 2, 2),
    "compact": (fx.compact, 1, 1),
    "concat": (lambda *parts: "".join(fx.to_str(p) or "" for p in parts) or None, 1, None),
    "sha256": (fx.sha256, 1, 1),
    "norm_email": (fx.norm_email, 1, 1),
    "norm_phone": (fx.norm_phone, 1, 2),
}

# built-in JMESPath functions and their arity, for the load-time check
_BUILTIN_ARITY: dict[str, tuple[int, int | None]] = {
    "abs": (1, 1), "avg": (1, 1), "ceil": (1, 1), "contains": (2, 2), "ends_with": (2, 2),
    "floor": (1, 1), "join": (2, 2), "keys": (1, 1), "length": (1, 1), "map": (2, 2),
    "max": (1, 1), "max_by": (2, 2), "merge": (1, None), "min": (1, 1), "min_by": (2, 2),
    "not_null": (1, None), "reverse": (1, 1), "sort": (1, 1), "sort_by": (2, 2),
    "starts_with": (2, 2), "sum": (1, 1), "to_array": (1, 1), "to_number": (1, 1),
    "to_string": (1, 1), "type": (1, 1), "values": (1, 1),
}


def _make_method(fn: Callable[..., Any], required: int) -> Callable[..., Any]:
    def method(self: Any, *args: Any) -> Any:
        trimmed = list(args)
        while len(trimmed) > required and trimmed[-1] is None:
            trimmed.pop()  # optional arguments padded with null at compile time
        return fn(*trimmed)
    return method


def _build_functions_class() -> type:
    attrs: dict[str, Any] = {}
    for name, (fn, lo, hi) in _CUSTOM.items():
        method = _make_method(fn, lo)
        if hi is None:
            sig = [{"types": []}] * lo
            sig[-1] = {"types": [], "variadic": True}
        else:
            sig = [{"types": []}] * hi
        # optional trailing arguments are expressed by registering the max arity and
        # padding at call time; jmespath itself has no optional-arg notion
        attrs[f"_func_{name}"] = jp_functions.signature(*sig)(method)
    return type("RouterFunctions", (jp_functions.Functions,), attrs)


_FUNCTIONS = _build_functions_class()()
_OPTIONS = jmespath.Options(custom_functions=_FUNCTIONS)

FUNCTION_NAMES = sorted(set(_CUSTOM) | set(_BUILTIN_ARITY))


@dataclass(frozen=True)
class Expr:
    """A compiled JMESPath expression; `search` never raises on odd payloads.

    The checked AST is compiled once into Python closures (`router.expr.jmes_compile`)
    with the semantics of jmespath's TreeInterpreter; `parsed` is that AST (so
    `jmespath.parser.ParsedResult(source, parsed).search(doc, options=_OPTIONS)` is the
    reference evaluation)."""

    source: str
    _fn: Callable[[Any], Any] = field(repr=False)
    parsed: dict[str, Any] = field(compare=False, repr=False)

    def search(self, document: Any) -> Any:
        try:
            return self._fn(document)
        except SEARCH_ERRORS:
            return None

    @property
    def unchecked(self) -> Callable[[Any], Any]:
        """The compiled function itself, for loops that evaluate many expressions per
        event and catch SEARCH_ERRORS themselves (one call less per expression)."""
        return self._fn


# what an odd payload can make an expression raise; `search` answers null instead
SEARCH_ERRORS = (JMESPathError, TypeError, ValueError, AttributeError)


class ExprError(ValueError):
    pass


def _check_functions(node: Any, pad: list[tuple[dict[str, Any], int]]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "function_expression":
            name = node["value"]
            nargs = len(node.get("children", []))
            if name in _CUSTOM:
                _, lo, hi = _CUSTOM[name]
            elif name in _BUILTIN_ARITY:
                lo, hi = _BUILTIN_ARITY[name]
            else:
                raise ExprError(f"unknown function {name}()")
            if nargs < lo or (hi is not None and nargs > hi):
                want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
                raise ExprError(f"{name}() takes {want} argument(s), got {nargs}")
            if name in _CUSTOM and hi is not None and nargs < hi:
                pad.append((node, hi - nargs))
        for child in node.get("children", []):
            _check_functions(child, pad)
    elif isinstance(node, list):
        for child in node:
            _check_functions(child, pad)


def compile_expr(source: str, *, falsy_logic_is_null: bool = False) -> Expr:
    """Compile and check an expression; raises ExprError with a readable message.

    `falsy_logic_is_null`: for mapping fields, `cond && value` must mean "value when
    cond", not "false otherwise". An expression whose top level is `&&`/`||` yields
    null instead of a falsy result, so the field is simply omitted."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("empty expression")
    try:
        compiled = jmespath.compile(source)
    except JMESPathError as exc:
        raise ExprError(f"invalid JMESPath {source!r}: {exc}") from None
    # jmespath caches parsed ASTs per source string: edit a private copy, so padding and
    # the falsy rewrite never leak into another compile of the same text
    parsed: dict[str, Any] = copy.deepcopy(compiled.parsed)
    pad: list[tuple[dict[str, Any], int]] = []
    _check_functions(parsed, pad)
    for node, missing in pad:  # fill optional trailing arguments with null literals
        node["children"] = [*node["children"]] + [{"type": "literal", "value": None,
                                                   "children": []}] * missing
    if falsy_logic_is_null and parsed.get("type") in ("and_expression", "or_expression"):
        parsed = {"type": "or_expression", "children": [
            parsed, {"type": "literal", "value": None, "children": []}]}
    return Expr(source, compile_ast(parsed, _FUNCTIONS.call_function, custom=_CUSTOM), parsed)
