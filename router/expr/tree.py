"""YAML trees whose string leaves may be Jinja templates, compiled once, rendered often.

A destination's payload is declared as the JSON it produces ("fields are the
contract"): literal leaves stay literal, `{{ }}` leaves render with native types, and
empty results are dropped so optional fields need no surrounding conditions.

Speed: every leaf is compiled on its own (so `validate` can point at the leaf that is
wrong), and the whole tree is also fused into ONE Jinja expression — a dict/list
literal of the leaves' expressions — so rendering a payload costs one template
context instead of one per field. Trees with statements (`{% %}`) or whitespace
control fall back to rendering leaf by leaf.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Undefined

from router.expr.functions import KeepEmpty
from router.expr.jinja import (
    TemplateError,
    check_template,
    compile_template,
    is_template,
    render,
)

Path = tuple[str | int, ...]

_SINGLE = re.compile(r"^\{\{(?!-)(.*?)(?<!-)\}\}$", re.S)
_PART = re.compile(r"\{\{(?!-)(.*?)(?<!-)\}\}", re.S)


class _Leaf:
    """A template leaf, checked at load and compiled on first render."""

    __slots__ = ("_template", "source")

    def __init__(self, source: str):
        self.source = source
        self._template: Any = None

    @property
    def template(self) -> Any:
        if self._template is None:
            self._template = compile_template(self.source)
        return self._template


class _NotFusable(Exception):
    pass


def _compile(value: Any, path: Path, errors: Callable[[Path, str], None]) -> Any:
    if isinstance(value, Mapping):  # plain or frozen (read-only) mappings
        return {k: _compile(v, (*path, k), errors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_compile(v, (*path, i), errors) for i, v in enumerate(value)]
    if is_template(value):
        try:
            check_template(value)
        except TemplateError as exc:
            errors(path, str(exc))
            return None
        return _Leaf(value)
    return value


def _literal(value: Any) -> str:
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise _NotFusable(f"literal of type {type(value).__name__}")


def _leaf_expression(text: str) -> str:
    if "{%" in text or "{#" in text or "{{-" in text or "-}}" in text:
        raise _NotFusable("statements or whitespace control")
    single = _SINGLE.match(text.strip()) if text.strip() == text else None
    if single and "{{" not in single.group(1) and "}}" not in single.group(1):
        return f"({single.group(1).strip()})"
    parts: list[str] = []
    literals: list[str] = []
    pos = 0
    for match in _PART.finditer(text):
        if match.start() > pos:
            literals.append(text[pos:match.start()])
            parts.append(json.dumps(text[pos:match.start()]))
        parts.append(f"(({match.group(1).strip()}) | string)")
        pos = match.end()
    if pos < len(text):
        literals.append(text[pos:])
        parts.append(json.dumps(text[pos:]))
    if any("{{" in lit or "}}" in lit for lit in literals):
        raise _NotFusable("unbalanced braces")  # leaf by leaf, so the error is located
    return "(" + " ~ ".join(parts) + ")" if parts else '""'


def _fuse(value: Any) -> str:
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(str(k))}: {_fuse(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fuse(v) for v in value) + "]"
    if is_template(value):
        return _leaf_expression(value)
    return _literal(value)


def _render(node: Any, context: dict[str, Any]) -> Any:
    if isinstance(node, _Leaf):
        return render(node.template, context)
    if isinstance(node, dict):
        return {k: _render(v, context) for k, v in node.items()}
    if isinstance(node, list):
        return [_render(v, context) for v in node]
    return node


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _clean(value: Any, drop_empty: bool) -> Any:
    """Undefined becomes None; with drop_empty, None/""/[]/{} disappear, recursively."""
    kind = type(value)
    if kind in _SCALARS:  # most leaves: no Undefined check, no recursion
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            t = type(item)
            if t is str:  # the common leaf: empty or not, nothing else to check
                if item or not drop_empty:
                    out[key] = item
                continue
            if t is KeepEmpty:  # required by the platform even when empty; it stays a
                out[key] = item  # KeepEmpty so a wrapper rendering it again keeps it too
                continue
            if t not in _SCALARS:
                item = _clean(item, drop_empty)
            if drop_empty and (item is None or item == "" or item == [] or item == {}):
                continue
            out[key] = item
        return out
    if kind is list:
        items = [v if type(v) in _SCALARS else _clean(v, drop_empty) for v in value]
        if drop_empty:
            return [v for v in items if not (v is None or v == "" or v == [] or v == {})]
        return items
    if kind is KeepEmpty:
        return value
    if isinstance(value, Undefined):
        return None
    return value


@dataclass(frozen=True)
class TemplateTree:
    node: Any
    fused: _Leaf | None = None  # the whole tree as one template, when it fuses

    def render(self, context: dict[str, Any], keep_empty: bool = False) -> Any:
        if self.fused is not None:
            value = self.fused.template.render(context)
        else:
            value = _render(self.node, context)
        return _clean(value, drop_empty=not keep_empty)


def compile_tree(value: Any, path: Path, errors: Callable[[Path, str], None]) -> TemplateTree:
    """One compilation for the whole tree when it fuses and compiles; otherwise (or to
    locate an error) each leaf on its own, reporting errors at the leaf's path."""
    if _has_template(value):
        try:
            source = "{{ " + _fuse(value) + " }}"
            check_template(source)
            return TemplateTree(None, _Leaf(source))
        except (_NotFusable, TemplateError):
            pass
    return TemplateTree(_compile(value, path, errors), None)


def _has_template(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_template(v) for v in value)
    return is_template(value)


def merge_trees(base: Any, extra: Any) -> Any:
    """Deep-merge `extra` into `base` (dicts merge, anything else replaces)."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge_trees(base.get(key), value) if key in base else value
        return out
    return extra
