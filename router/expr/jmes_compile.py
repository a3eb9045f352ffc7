"""Compile a parsed JMESPath AST into plain Python closures.

`jmespath`'s TreeInterpreter dispatches on the node type of every AST node on every
search; mapping files evaluate ~60 expressions per event, so that walk dominated
ingest. `compile_ast` does the dispatch once and returns nested closures with the
interpreter's exact semantics (jmespath 1.x `visitor.TreeInterpreter`): the same
results, the same types, and the same exceptions on the same inputs.

Rules reproduced (see the interpreter for the reference):

* falsy values are `null`, `false`, `""`, `[]`, `{}` (0 is true); `!` is Python `not`
  except that `!0` is false;
* `==`/`!=` use the library's equality (0/1 never equal false/true at the top level);
  ordering comparisons only between numbers or strings, otherwise null;
* projections drop null results, `[]` on a non-list is null, a multiselect on null is
  null, a field of a non-object is null, an index/slice of a non-list is null;
* function arguments are all evaluated (left to right) before the call.

Functions: names in `custom` are called directly (`(fn, min, max)` entries as in
`router.expr.jmes._CUSTOM`: trailing null arguments are trimmed down to `min`, exactly
what the registered jmespath method does). Everything else goes through `call(name,
args)` — the library's `Functions.call_function`, keeping its type checks and errors.
A few built-ins used by the mappings have a fast path that applies only when the
arguments already pass the library's type check; otherwise they fall back to `call`,
which raises the library's error. Fast paths are only used when `call` is the stock
`Functions.call_function` of an object whose built-in is not overridden.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from jmespath.functions import Functions
from jmespath.visitor import _equals, _is_actual_number, _is_comparable

Fn = Callable[[Any], Any]
Call = Callable[[str, list[Any]], Any]
CustomTable = Mapping[str, tuple[Callable[..., Any], int, int | None]]

__all__ = ["compile_ast"]


def compile_ast(node: dict[str, Any], call: Call, *, custom: CustomTable | None = None,
                dict_cls: type = dict) -> Fn:
    """A closure `document -> result` equivalent to `TreeInterpreter.visit(node, document)`.

    `call(name, resolved_args)` evaluates a JMESPath function (normally the bound
    `call_function` of the `Functions` instance the interpreter would use); `custom`
    lists functions to call directly; `dict_cls` is `Options.dict_cls` (multiselect
    hashes)."""
    return _Compiler(call, custom or {}, dict_cls).compile(node)


# --- helpers ---------------------------------------------------------------------------

def _identity(value: Any) -> Any:
    return value


def _get(value: Any, key: str) -> Any:
    try:
        return value.get(key)
    except AttributeError:
        return None


def _is_false(value: Any) -> bool:
    """The interpreter's `_is_false`: null, false, "", [], {} (and equals of those)."""
    if value is None or value is False:
        return True
    t = type(value)
    if t is str or t is list or t is dict:
        return not value
    if t is int or t is float or t is bool:
        return False
    return value == "" or value == [] or value == {} or value is None or value is False


def _eq(x: Any, y: Any) -> bool:
    """The interpreter's `_equals` (`0 == false` is false), with a fast path: when
    either side is a string or null the 0/1-vs-bool special case cannot apply."""
    if type(x) is str or type(y) is str or x is None or y is None:
        return x == y
    return _equals(x, y)


def _comparable(x: Any) -> bool:
    t = type(x)
    return t is int or t is float or t is str or _is_comparable(x)


_ORDERING = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}
_SEQUENCE_TYPES = ("subexpression", "index_expression", "pipe")
_IDENTITY_TYPES = ("identity", "current")
_FAST_BUILTINS = ("sum", "length", "join", "map", "merge", "not_null", "to_array",
                  "starts_with", "contains")


def _stock_builtins(call: Call) -> frozenset[str]:
    """The fast-path built-ins whose behaviour behind `call` is the library's own."""
    owner = getattr(call, "__self__", None)
    if not isinstance(owner, Functions) or getattr(call, "__func__", None) is not \
            Functions.call_function:
        return frozenset()
    cls = type(owner)
    for method in ("_validate_arguments", "_type_check", "_type_check_single",
                   "_subtype_check", "_get_allowed_pytypes"):
        if getattr(cls, method) is not getattr(Functions, method):
            return frozenset()
    table = cls.FUNCTION_TABLE
    return frozenset(name for name in _FAST_BUILTINS
                     if name in table
                     and table[name]["function"] is getattr(Functions, f"_func_{name}"))


class _Expression:
    """What the interpreter passes for `&expr` (jmespath.visitor._Expression).

    The class name matters: the library type-checks expref arguments by
    `type(arg).__name__ == "_Expression"`. Built-ins call
    `expref.visit(expref.expression, value)`."""

    __slots__ = ("_compiler", "_fn", "expression")

    def __init__(self, expression: dict[str, Any], fn: Fn, compiler: _Compiler) -> None:
        self.expression = expression
        self._fn = fn
        self._compiler = compiler

    def visit(self, node: dict[str, Any], value: Any) -> Any:
        if node is self.expression:
            return self._fn(value)
        return self._compiler.compile(node)(value)

    def __repr__(self) -> str:
        return f"_Expression({self.expression!r})"


def _field_chain(keys: list[str]) -> Fn:
    """`a.b.c`: each step is `value.get(key)`, null when value has no `.get`."""
    if len(keys) == 1:
        (k,) = keys

        def field(value: Any) -> Any:
            if type(value) is dict:
                return value.get(k)
            if value is None:
                return None
            return _get(value, k)
        return field
    if len(keys) == 2:
        k1, k2 = keys

        def field2(value: Any) -> Any:
            if type(value) is dict:
                value = value.get(k1)
            elif value is None:
                return None
            else:
                value = _get(value, k1)
            if type(value) is dict:
                return value.get(k2)
            if value is None:
                return None
            return _get(value, k2)
        return field2
    chain = tuple(keys)

    def fields(value: Any) -> Any:
        for k in chain:
            if type(value) is dict:
                value = value.get(k)
            elif value is None:
                return None  # a field of null is null, and so is every further field
            else:
                value = _get(value, k)
        return value
    return fields


def _compose(steps: list[Fn]) -> Fn:
    if not steps:
        return _identity
    if len(steps) == 1:
        return steps[0]
    if len(steps) == 2:
        f, g = steps

        def two(value: Any) -> Any:
            return g(f(value))
        return two
    chain = tuple(steps)

    def many(value: Any) -> Any:
        for step in chain:
            value = step(value)
        return value
    return many


def _raise_unsupported(node_type: Any) -> Fn:
    def unsupported(value: Any) -> Any:
        raise NotImplementedError(node_type)  # TreeInterpreter.default_visit
    return unsupported


class _Compiler:
    def __init__(self, call: Call, custom: CustomTable, dict_cls: type) -> None:
        self.call = call
        self.custom = custom
        self.dict_cls = dict_cls
        self.fast = _stock_builtins(call)

    def compile(self, node: dict[str, Any]) -> Fn:
        method = getattr(self, f"_c_{node['type']}", None)
        if method is None:
            return _raise_unsupported(node["type"])
        fn: Fn = method(node)
        return fn

    # --- paths -----------------------------------------------------------------------

    def _sequence(self, node: dict[str, Any]) -> Fn:
        """subexpression / index_expression / pipe: left-to-right composition. Nested
        sequences are inlined and runs of fields become one chained lookup."""
        steps: list[Fn] = []
        keys: list[str] = []

        def add(children: list[dict[str, Any]]) -> None:
            for child in children:
                kind = child["type"]
                if kind == "field":
                    keys.append(child["value"])
                    continue
                if kind in _SEQUENCE_TYPES:
                    add(child["children"])
                    continue
                if keys:
                    steps.append(_field_chain(keys[:]))
                    keys.clear()
                if kind in _IDENTITY_TYPES:
                    continue
                steps.append(self.compile(child))

        add(node["children"])
        if keys:
            steps.append(_field_chain(keys))
        return _compose(steps)

    _c_subexpression = _sequence
    _c_index_expression = _sequence
    _c_pipe = _sequence

    def _c_field(self, node: dict[str, Any]) -> Fn:
        return _field_chain([node["value"]])

    def _c_identity(self, node: dict[str, Any]) -> Fn:
        return _identity

    _c_current = _c_identity

    def _c_literal(self, node: dict[str, Any]) -> Fn:
        constant = node["value"]

        def literal(value: Any) -> Any:
            return constant  # the same object every time, as the interpreter returns
        return literal

    def _c_index(self, node: dict[str, Any]) -> Fn:
        i = node["value"]

        def index(value: Any) -> Any:
            if type(value) is list:
                n = len(value)
                return value[i] if -n <= i < n else None
            if not isinstance(value, list):
                return None
            try:
                return value[i]
            except IndexError:
                return None
        return index

    def _c_slice(self, node: dict[str, Any]) -> Fn:
        s = slice(*node["children"])

        def slice_(value: Any) -> Any:
            if not isinstance(value, list):
                return None
            return value[s]  # step 0 raises ValueError, as in the interpreter
        return slice_

    # --- projections -----------------------------------------------------------------

    def _c_projection(self, node: dict[str, Any]) -> Fn:
        left = self.compile(node["children"][0])
        right_node = node["children"][1]
        if right_node["type"] in _IDENTITY_TYPES:
            def project_all(value: Any) -> Any:
                base = left(value)
                if not isinstance(base, list):
                    return None
                return [e for e in base if e is not None]
            return project_all
        right = self.compile(right_node)

        def project(value: Any) -> Any:
            base = left(value)
            if not isinstance(base, list):
                return None
            return [c for e in base if (c := right(e)) is not None]
        return project

    def _c_value_projection(self, node: dict[str, Any]) -> Fn:
        left = self.compile(node["children"][0])
        right = self.compile(node["children"][1])

        def project_values(value: Any) -> Any:
            base = left(value)
            if type(base) is dict:
                values = base.values()
            else:
                try:
                    values = base.values()
                except AttributeError:
                    return None
            return [c for e in values if (c := right(e)) is not None]
        return project_values

    def _c_filter_projection(self, node: dict[str, Any]) -> Fn:
        left_node, right_node, cond_node = node["children"]
        left = self.compile(left_node)
        cond = self.compile(cond_node)
        if right_node["type"] in _IDENTITY_TYPES:
            def filter_all(value: Any) -> Any:
                base = left(value)
                if not isinstance(base, list):
                    return None
                return [e for e in base if not _is_false(cond(e)) and e is not None]
            return filter_all
        right = self.compile(right_node)

        def filter_(value: Any) -> Any:
            base = left(value)
            if not isinstance(base, list):
                return None
            collected = []
            for e in base:
                if not _is_false(cond(e)):
                    c = right(e)
                    if c is not None:
                        collected.append(c)
            return collected
        return filter_

    def _c_flatten(self, node: dict[str, Any]) -> Fn:
        inner = self.compile(node["children"][0])

        def flatten(value: Any) -> Any:
            base = inner(value)
            if not isinstance(base, list):
                return None
            merged: list[Any] = []
            for e in base:
                if isinstance(e, list):
                    merged.extend(e)
                else:
                    merged.append(e)
            return merged
        return flatten

    # --- multiselect ------------------------------------------------------------------

    def _c_multi_select_list(self, node: dict[str, Any]) -> Fn:
        parts = tuple(self.compile(child) for child in node["children"])

        def select_list(value: Any) -> Any:
            if value is None:
                return None
            return [part(value) for part in parts]
        return select_list

    def _c_multi_select_dict(self, node: dict[str, Any]) -> Fn:
        pairs = tuple((child["value"], self.compile(child)) for child in node["children"])
        dict_cls = self.dict_cls
        if dict_cls is dict:
            def select_dict(value: Any) -> Any:
                if value is None:
                    return None
                return {key: part(value) for key, part in pairs}
            return select_dict

        def select_dict_cls(value: Any) -> Any:
            if value is None:
                return None
            collected = dict_cls()
            for key, part in pairs:
                collected[key] = part(value)
            return collected
        return select_dict_cls

    def _c_key_val_pair(self, node: dict[str, Any]) -> Fn:
        return self.compile(node["children"][0])

    # --- logic and comparison ----------------------------------------------------------

    def _flatten_logic(self, node: dict[str, Any]) -> list[Fn]:
        """`a || b || c` parses as or(or(a, b), c); evaluating the operands in order is
        the same thing (likewise for &&)."""
        kind = node["type"]
        out: list[Fn] = []
        left, right = node["children"]
        if left["type"] == kind:
            out.extend(self._flatten_logic(left))
        else:
            out.append(self.compile(left))
        out.append(self.compile(right))
        return out

    def _c_or_expression(self, node: dict[str, Any]) -> Fn:
        *heads, last = self._flatten_logic(node)
        if len(heads) == 1:
            (first,) = heads

            def or2(value: Any) -> Any:
                matched = first(value)
                if matched is None or _is_false(matched):
                    return last(value)
                return matched
            return or2
        chain = tuple(heads)

        def or_(value: Any) -> Any:
            for operand in chain:
                matched = operand(value)
                # _is_false inlined for the common types (this loop is the hot spot of
                # `a.b || c.d || ...` fallbacks)
                if matched is None:
                    continue
                t = type(matched)
                if t is str or t is dict or t is list:
                    if matched:
                        return matched
                elif t is int or t is float or t is bool:
                    if matched is not False:
                        return matched
                elif not _is_false(matched):
                    return matched
            return last(value)
        return or_

    def _c_and_expression(self, node: dict[str, Any]) -> Fn:
        *heads, last = self._flatten_logic(node)
        chain = tuple(heads)

        def and_(value: Any) -> Any:
            for operand in chain:
                matched = operand(value)
                if _is_false(matched):
                    return matched
            return last(value)
        return and_

    def _c_not_expression(self, node: dict[str, Any]) -> Fn:
        inner = self.compile(node["children"][0])

        def not_(value: Any) -> Any:
            result = inner(value)
            t = type(result)
            if result is None or t is str or t is list or t is dict or t is bool:
                return not result
            if t is int or t is float:
                return False  # !0 is false (0 is true in JMESPath), !1 is false
            if _is_actual_number(result) and result == 0:
                return False
            return not result
        return not_

    def _c_comparator(self, node: dict[str, Any]) -> Fn:
        op = node["value"]
        left_node, right_node = node["children"]
        left = self.compile(left_node)
        right = self.compile(right_node)
        if op in ("eq", "ne"):
            negate = op == "ne"
            if right_node["type"] == "literal" and (
                    right_node["value"] is None or type(right_node["value"]) is str):
                constant = right_node["value"]  # `_equals` is plain == against these
                if negate:
                    def ne_const(value: Any) -> Any:
                        return not left(value) == constant  # noqa: SIM201 (the library negates ==)
                    return ne_const

                def eq_const(value: Any) -> Any:
                    return left(value) == constant
                return eq_const
            if negate:
                def ne(value: Any) -> Any:
                    return not _eq(left(value), right(value))
                return ne

            def eq(value: Any) -> Any:
                return _eq(left(value), right(value))
            return eq
        if op not in _ORDERING:
            def unknown(value: Any) -> Any:
                raise KeyError(op)  # TreeInterpreter.COMPARATOR_FUNC[op]
            return unknown
        compare = _ORDERING[op]

        def ordering(value: Any) -> Any:
            lhs = left(value)
            rhs = right(value)
            if not (_comparable(lhs) and _comparable(rhs)):
                return None
            return compare(lhs, rhs)
        return ordering

    # --- functions ---------------------------------------------------------------------

    def _c_expref(self, node: dict[str, Any]) -> Fn:
        expression = node["children"][0]
        ref = _Expression(expression, self.compile(expression), self)

        def expref(value: Any) -> Any:
            return ref
        return expref

    def _c_function_expression(self, node: dict[str, Any]) -> Fn:
        name = node["value"]
        children = node["children"]
        if name in self.custom:
            direct = self._custom_call(name, children)
            if direct is not None:
                return direct
        elif name in self.fast:
            fast = getattr(self, f"_fast_{name}")(children)
            if fast is not None:
                return fast
        return self._delegate(name, children)

    def _delegate(self, name: str, children: list[dict[str, Any]]) -> Fn:
        args = tuple(self.compile(child) for child in children)
        call = self.call

        def function(value: Any) -> Any:
            return call(name, [arg(value) for arg in args])
        return function

    def _custom_call(self, name: str, children: list[dict[str, Any]]) -> Fn | None:
        fn, lo, hi = self.custom[name]
        nargs = len(children)
        if nargs < lo or (hi is not None and nargs != hi):
            return None  # call_function raises the library's arity error at run time
        # Trailing null literals (the optional arguments compile_expr pads) are trimmed
        # at call time anyway: drop them now (never below `lo`).
        kept = list(children)
        while len(kept) > lo and kept[-1]["type"] == "literal" and kept[-1]["value"] is None:
            kept.pop()
        args = tuple(self.compile(child) for child in kept)
        if len(args) > lo:
            def trimmed(value: Any) -> Any:
                values = [arg(value) for arg in args]
                while len(values) > lo and values[-1] is None:
                    values.pop()
                return fn(*values)
            return trimmed
        if len(args) == 1:
            (a0,) = args

            def call1(value: Any) -> Any:
                return fn(a0(value))
            return call1
        if len(args) == 2:
            a0, a1 = args
            if kept[1]["type"] == "literal":
                c1 = kept[1]["value"]

                def call1c(value: Any) -> Any:
                    return fn(a0(value), c1)
                return call1c

            def call2(value: Any) -> Any:
                return fn(a0(value), a1(value))
            return call2

        def calln(value: Any) -> Any:
            return fn(*[arg(value) for arg in args])
        return calln

    # Fast built-ins: compute directly when the arguments pass the library's type check
    # (checked with exact types, as the library compares type names); otherwise defer to
    # `call`, which raises the library's error. Each returns None when the call shape is
    # not the library's (wrong arity): the generic path then raises at run time.

    def _args(self, children: list[dict[str, Any]], n: int) -> tuple[Fn, ...] | None:
        if len(children) != n:
            return None
        return tuple(self.compile(child) for child in children)

    def _fast_sum(self, children: list[dict[str, Any]]) -> Fn | None:
        args = self._args(children, 1)
        if args is None:
            return None
        (a0,) = args
        call = self.call

        def sum_(value: Any) -> Any:
            arg = a0(value)
            if type(arg) is list:
                for e in arg:
                    t = type(e)
                    if t is not int and t is not float:
                        break
                else:
                    return sum(arg)
            return call("sum", [arg])
        return sum_

    def _fast_length(self, children: list[dict[str, Any]]) -> Fn | None:
        args = self._args(children, 1)
        if args is None:
            return None
        (a0,) = args
        call = self.call

        def length(value: Any) -> Any:
            arg = a0(value)
            t = type(arg)
            if t is list or t is str or t is dict:
                return len(arg)
            return call("length", [arg])
        return length

    def _fast_join(self, children: list[dict[str, Any]]) -> Fn | None:
        args = self._args(children, 2)
        if args is None:
            return None
        a0, a1 = args
        call = self.call

        def join(value: Any) -> Any:
            sep = a0(value)
            items = a1(value)
            if type(sep) is str and type(items) is list:
                for e in items:
                    if type(e) is not str:
                        break
                else:
                    return sep.join(items)
            return call("join", [sep, items])
        return join

    def _fast_map(self, children: list[dict[str, Any]]) -> Fn | None:
        if len(children) != 2 or children[0]["type"] != "expref":
            return None
        ref_fn = self.compile(children[0])
        inner = self.compile(children[0]["children"][0])
        a1 = self.compile(children[1])
        call = self.call

        def map_(value: Any) -> Any:
            items = a1(value)
            if type(items) is list:
                return [inner(e) for e in items]  # map keeps nulls
            return call("map", [ref_fn(value), items])
        return map_

    def _fast_merge(self, children: list[dict[str, Any]]) -> Fn | None:
        if not children:
            return None
        args = tuple(self.compile(child) for child in children)
        call = self.call

        def merge(value: Any) -> Any:
            objs = [arg(value) for arg in args]
            merged: dict[Any, Any] = {}
            for obj in objs:
                if type(obj) is not dict:
                    return call("merge", objs)
                merged.update(obj)
            return merged
        return merge

    def _fast_not_null(self, children: list[dict[str, Any]]) -> Fn | None:
        if not children:
            return None
        args = tuple(self.compile(child) for child in children)

        def not_null(value: Any) -> Any:
            values = [arg(value) for arg in args]  # all arguments are evaluated first
            for v in values:
                if v is not None:
                    return v
            return None
        return not_null

    def _fast_to_array(self, children: list[dict[str, Any]]) -> Fn | None:
        args = self._args(children, 1)
        if args is None:
            return None
        (a0,) = args

        def to_array(value: Any) -> Any:
            arg = a0(value)
            return arg if isinstance(arg, list) else [arg]
        return to_array

    def _fast_starts_with(self, children: list[dict[str, Any]]) -> Fn | None:
        args = self._args(children, 2)
        if args is None:
            return None
        a0, a1 = args
        call = self.call

        def starts_with(value: Any) -> Any:
            subject = a0(value)
            prefix = a1(value)
            if type(subject) is str and type(prefix) is str:
                return subject.startswith(prefix)
            return call("starts_with", [subject, prefix])
        return starts_with

    def _fast_contains(self, children: list[dict[str, Any]]) -> Fn | None:
        args = self._args(children, 2)
        if args is None:
            return None
        a0, a1 = args
        call = self.call

        def contains(value: Any) -> Any:
            subject = a0(value)
            search = a1(value)
            t = type(subject)
            if t is list or t is str:
                return search in subject  # Python `in`, as the library (0 in [false])
            return call("contains", [subject, search])
        return contains
