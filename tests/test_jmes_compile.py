"""Differential tests: compiled JMESPath closures vs. jmespath's TreeInterpreter.

`router.expr.jmes_compile` must give exactly the interpreter's results — same values,
same types (1 vs 1.0 vs true), same key order, and the same exception type where the
interpreter raises. The reference evaluation is the library's own
`ParsedResult.search(doc, options=_OPTIONS)` over the AST `compile_expr` checked,
padded and rewrote (what `Expr.search` ran before the compiler existed).

Run as a module for the timing comparison: `python -m tests.test_jmes_compile`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jmespath
import pytest
import yaml
from jmespath.functions import Functions
from jmespath.parser import ParsedResult

from router.expr.jmes import _OPTIONS, Expr, compile_expr
from router.expr.jmes_compile import compile_ast

REPO = Path(__file__).resolve().parent.parent
CASES_DIR = REPO / "tests" / "config" / "mappings"
MAPPING_FILES = sorted((REPO / "mappings").glob("*.yaml"))
SKIP_KEYS = ("canonical", "use", "description")


# --- comparison helpers -----------------------------------------------------------------

def same(a: Any, b: Any) -> bool:
    """Equal with identical types all the way down (1 != 1.0 != True) and key order."""
    if type(a).__name__ == "_Expression" and type(b).__name__ == "_Expression":
        return bool(a.expression == b.expression)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def outcome(fn: Callable[[Any], Any], doc: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(doc)
    except Exception as exc:  # the exception type must match too
        return "raise", type(exc)


def same_outcome(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    return a[1] is b[1] if a[0] == "raise" else same(a[1], b[1])


def reference(expr: Expr) -> Callable[[Any], Any]:
    """The library's interpreter over the same (checked, padded, rewritten) AST."""
    parsed = ParsedResult(expr.source, expr.parsed)
    return lambda doc: parsed.search(doc, options=_OPTIONS)


def mismatches(exprs: list[Expr], docs: list[Any]) -> list[str]:
    bad = []
    for expr in exprs:
        ref = reference(expr)
        for i, doc in enumerate(docs):
            want = outcome(ref, doc)
            got = outcome(expr._fn, doc)
            if not same_outcome(want, got):
                bad.append(f"{expr.source!r} on doc #{i}: interpreter {want!r}, compiled {got!r}")
    return bad


# --- (a) every expression of the shipped mappings over the golden inputs ----------------

def _leaves(tree: Any, top: bool = True) -> Iterator[str]:
    """Leaf expressions of a defaults / field set / event tree (as the config loader)."""
    for key, value in (tree or {}).items():
        if top and key in SKIP_KEYS:
            continue
        if isinstance(value, dict):
            yield from _leaves(value, False)
        elif value is not None:
            yield str(value)


def mapping_exprs(data: dict[str, Any]) -> list[Expr]:
    ingest = data.get("ingest") or {}
    plain = [data["key"]] + [ingest[k] for k in ("detect", "batch_path", "idempotency")
                             if ingest.get(k)]
    fields = list(_leaves(data.get("defaults")))
    for tree in (data.get("field_sets") or {}).values():
        fields.extend(_leaves(tree))
    for tree in (data.get("events") or {}).values():
        fields.extend(_leaves(tree))
    exprs = [compile_expr(src) for src in dict.fromkeys(plain)]
    exprs += [compile_expr(src, falsy_logic_is_null=True) for src in dict.fromkeys(fields)]
    return exprs


def mappings() -> dict[str, dict[str, Any]]:
    out = {}
    for path in MAPPING_FILES:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "source" in data and "key" in data:
            out[data["source"]] = data
    return out


def golden_documents(source: str, data: dict[str, Any]) -> list[Any]:
    """Each golden input (the envelope) and each of its messages with `_meta` merged."""
    batch_src = (data.get("ingest") or {}).get("batch_path")
    batch_path = compile_expr(batch_src) if batch_src else None
    docs: list[Any] = []
    cases_file = CASES_DIR / f"{source}.yaml"
    spec = yaml.safe_load(cases_file.read_text()) if cases_file.exists() else {"cases": []}
    for case in spec["cases"]:
        case = {**(spec.get("defaults") or {}), **case}
        document, meta = case["input"], case.get("meta")
        docs.append(document)
        messages = [document]
        if isinstance(document, list):
            messages = document
        elif batch_path is not None and isinstance(document, dict):
            batch = batch_path.search(document)
            if isinstance(batch, list):
                messages = batch
        for message in messages:
            if isinstance(message, dict) and meta:
                message = {**message, "_meta": {**(message.get("_meta") or {}), **meta}}
            docs.append(message)
    return docs


MAPPINGS = mappings()


def test_mappings_and_goldens_found() -> None:
    assert len(MAPPINGS) >= 5
    assert all((CASES_DIR / f"{source}.yaml").exists() for source in MAPPINGS)


@pytest.mark.parametrize("source", sorted(MAPPINGS))
def test_mapping_expressions_match_interpreter_on_goldens(source: str) -> None:
    data = MAPPINGS[source]
    exprs = mapping_exprs(data)
    docs = golden_documents(source, data)
    assert len(exprs) > 20 and len(docs) > 10
    bad = mismatches(exprs, docs)
    assert not bad, "\n".join(bad[:20])


# --- (b) a hand-written corpus of edge cases ------------------------------------------

RICH: dict[str, Any] = {
    "a": 1, "b": 0, "c": True, "d": False, "e": None, "f": "", "g": [], "h": {}, "s": "hello",
    "n": 2.5, "z": 1.0, "neg": -3,
    "nested": {"x": {"y": {"z": "deep"}}, "list": [1, 2, 3]},
    "people": [{"name": "ann", "age": 30, "tags": ["a", "b"]},
               {"name": "bob", "age": "40", "tags": []},
               {"name": None, "age": 25, "tags": [["x"], "y"]},
               {"age": 0.0}, "str", 7, None],
    "matrix": [[1, 2], [3, [4, 5]], 6, [], None, [[None]]],
    "objs": {"k1": {"v": 1}, "k2": {"v": None}, "k3": {"w": 2}, "k4": 5},
    "nums": [5, -1, 2.5, 0, 10],
    "ints": [3, 1, 2],
    "strs": ["b", "a", "c"],
    "mixed": [1, "1", True, None, 1.0, [1], {"a": 1}, 0, False],
    "bools": [True, False, 0, 1, "", [], {}, None, 0.0],
    "url": "https://x.example/p?fbclid=abc&gclid=g1",
    "amount": "1,299.505",
    "pairs": [{"name": "_fbp", "value": "fb.1"}, {"key": "k", "value": 0}],
    "foo.bar": "quoted",
    "props": {"products": [{"quantity": "2", "price": "3.5"}, {"quantity": 1}, {"price": 1}]},
    "type": "track", "event": "Order Completed",
}

FLIPPED: dict[str, Any] = {  # the same keys with other types
    "a": "1", "b": False, "c": 1, "d": 0, "e": {"a": 1, "b": 0}, "f": "x", "g": [0], "h": {"k": 1},
    "s": 5, "n": None, "z": True, "nested": [1, 2], "people": {"name": "x", "age": 1},
    "matrix": "notalist", "objs": [1, 2], "nums": [], "ints": [], "strs": [], "mixed": [],
    "bools": {}, "url": None, "amount": 12, "pairs": {"name": "_fbp"}, "type": "identify",
    "props": {"products": [{"quantity": None}]},
}

DOCS: list[Any] = [RICH, FLIPPED, {}, [], None, "text", 0, False, [RICH, None, 1, [2, [3]], "x"],
                   [{"a": 1, "b": [1, 2]}, {"a": 2, "b": []}, {"b": None}]]

CORPUS: list[str] = [
    # fields, subexpressions, quoted identifiers, @
    "a", "nested.x.y.z", "nested.x.nope.z", "s.length", '"foo.bar"', "e.a", "s.x",
    "nums.x", "@", "@.a", "a | @.b", "nested.list", '"a"', "e.a.b.c.d",
    # index / slice
    "nums[0]", "nums[-1]", "nums[-5]", "nums[-6]", "nums[10]", "s[0]", "[0]", "[-1]",
    "nested.list[1]", "matrix[1][1][0]", "@[0]",
    "nums[1:3]", "nums[::-1]", "nums[::2]", "nums[-2:]", "nums[:-2]", "nums[5:1:-2]",
    "nums[-10:10]", "nums[::0]", "s[0:2]", "[1:]", "[::-1].a", "nums[1:3].x", "nums[0:2][0]",
    # projections, flatten
    "people[*].name", "people[*]", "people[*].tags[0]", "people[*].tags[*]",
    "people[*].tags[]", "people[].tags[][]", "matrix[]", "matrix[][]", "matrix[*][0]",
    "matrix[*][*]", "objs.*", "objs.*.v", "objs.*.*", "objs.* | [0]", "people[*].name | [0]",
    "people[*].name[0]", "s[*]", "e[*]", "objs[*]", "*", "*.x", "[*]", "[*].a", "[]", "[].b",
    "[][]", "people[].age", "s[]", "e[]", "people[*].[name, age]", "people[*].{n: name}",
    "nested.list[*] | [-1]",
    # filters
    "people[?age > `26`].name", "people[?age > `26`]", "people[?name]", "people[?!name]",
    "people[?tags == `[]`]", "people[?age == `30`].name", "people[?age == '40']",
    "people[?missing]", "people[?missing == `null`]", "nums[?@ > `1`]",
    "nums[?@ < `3`] | length(@)", "mixed[?@ == `1`]", "mixed[?@ == `true`]",
    "mixed[?@ == `0`]", "mixed[?@ == `false`]", "mixed[?@ != `1`]", "bools[?@]", "bools[?!@]",
    "e[?a]", "people[?age >= `25` && age < `40`].name", "people[?age > `26` || name == 'bob'].name",
    "strs[?@ > 'a']", "[?a > `1`]", "[?b]", "[?b] | [0].a", "people[?tags][]",
    "people[?tags[0] == 'a'].tags[0]", "matrix[?length(@) > `1`]",
    # comparisons
    "a == `1`", "a == `1.0`", "a == `true`", "b == `false`", "c == `1`", "d == `0`", "z == `1`",
    "a != `true`", "a < `2`", "a < '2'", "s < 't'", "s <= 'hello'", "c < `2`", "e < `1`",
    "g == `[]`", "h == `{}`", "nested.list == `[1, 2, 3]`", "mixed == mixed",
    "`[1]` == `[true]`", "n >= `2.5`", "a != `1`", "e == `null`", "e != `null`", "f == ''",
    "nums[0] > nums[1]", "a == b", "b == d", "a > neg", "type == 'track' && event || type",
    "n > `1` == `true`", "!a == b",
    # or / and / not
    "e || f || g || h || d || b", "b || a", "a && s", "f && a", "g && a", "h && a", "d && a",
    "e && a", "b && s", "!e", "!f", "!g", "!h", "!d", "!b", "!a", "!n", "!c", "!s",
    "!people", "!`0.0`", "!`[0]`", "d || `null`", "e && a || s", "a || e && s",
    "!(a && b)", "!!f", "e || `0`",
    # multiselect
    "[a, s, e]", "{x: a, y: e}", "e.[a, b]", "e.{a: a}", "nested.{k: x.y.z, l: list[0]}",
    "f.[a]", "g.{a: a}", "[a, [b, [c]]]", "{a: a, a: b}", "{\"quoted key\": s}",
    "people[0].{n: name, t: tags[-1]}", "[e]", "{e: e}",
    # literals and raw strings
    '`[1, {"a": 2}]`', '`"lit"`', "'raw string'", "'it\\'s'", "`null`", "`1.5e2`", "`true`",
    "`{}`", "`[]` || `1`", "`-0`", "`2.0`", "''",
    # pipes
    "people | [0] | name", "people[*].name | [1]", "people[*] | [?age]", "nums | length(@)",
    "matrix[] | [0]", "@ | a", "a | @", "people[*].tags | []", "people[*].tags | [*][0]",
    # built-in functions
    "length(s)", "length(nums)", "length(objs)", "length(a)", "length(e)", "sum(nums)",
    "sum(strs)", "sum(`[]`)", "sum(mixed)", "sum(ints)", "join(',', strs)", "join(',', nums)",
    "join(a, strs)", "map(&name, people)", "map(&[name, age], people)", "map(&length(@), strs)",
    "map(&a, e)", "map(&map(&@, @), matrix[?type(@) == 'array'])", "map(a, people)",
    "merge(objs, `{\"x\": 1}`)", "merge(objs, a)", "merge(h)", "merge(objs, h, {z: z})",
    "not_null(e, f, a)", "not_null(e)", "not_null(e, e.x, `0`)", "to_array(a)",
    "to_array(nums)", "to_array(e)", "starts_with(s, 'he')", "starts_with(a, 'x')",
    "starts_with(s, e)", "contains(strs, 'a')", "contains(s, 'ell')", "contains(bools, `0`)",
    "contains(mixed, `true`)", "contains(s, `1`)", "contains(a, `1`)",
    "sort_by(people[0:3], &to_string(age))", "sort_by(people[?name], &name)",
    "sort_by(people[0:3], &name)", "max_by(people[?type(age) == 'number'], &age).name",
    "min_by(people[?type(age) == 'number'], &age)", "sort_by(nums, &@)", "sort(strs)",
    "reverse(nums)", "reverse(s)", "keys(objs)", "values(objs)", "type(@)", "type(a)",
    "to_string(nums)", "to_number('12')", "to_number(amount)", "abs(neg)", "avg(nums)",
    "max(nums)", "min(strs)", "floor(n)", "ceil(n)", "ends_with(s, 'lo')", "&a",
    "map(&a, [@])", "length(people[*].name)",
    # custom functions (optional arguments padded with null and trimmed)
    "upper(s)", "lower(s)", "trim(' x ')", "str(a)", "str(z)", "str(c)", "number(amount)",
    "integer(n)", "money(amount)", "money(amount, `1`)", "money(e)", "money(amount, e)",
    "query_param(url, 'fbclid')", "query_param(url, s)", "attr(pairs, '_fbp')",
    "attr(pairs, 'k')", "concat(s, '-', a)", "concat(e, e)", "concat(s, e)",
    "first(people[*].name)", "multiply(a, n)", "compact(mixed)", "sha256(s)",
    "norm_email(' A@B.co ')", "split_tail('GA1.1.123.456', '.', `2`)",
    "iso_time('2026-01-02T03:04:05Z')", "unix_seconds(`1700000000`)", "unix_millis(s)",
    "norm_phone('4155550123')", "norm_phone('4155550123', 'US')", "norm_phone(e, e)",
    "props.products[].integer(quantity) | length(@) > `0` && sum(@) || `null`",
    "props.products[].{q: integer(quantity), p: number(price)}",
    "number(props.products[0].price) && money(props.products[0].price)",
]


def test_corpus_is_large() -> None:
    assert len(CORPUS) >= 60
    assert len(set(CORPUS)) == len(CORPUS), "duplicate corpus entries"


@pytest.mark.parametrize("falsy_logic_is_null", [False, True])
def test_corpus_matches_interpreter(falsy_logic_is_null: bool) -> None:
    exprs = [compile_expr(src, falsy_logic_is_null=falsy_logic_is_null) for src in CORPUS]
    bad = mismatches(exprs, DOCS)
    assert not bad, "\n".join(bad[:20])


BUILTIN_CORPUS = [src for src in CORPUS if all(
    f"{name}(" not in src for name in (
        "upper", "lower", "trim", "str", "number", "integer", "money", "iso_time", "unix_",
        "query_param", "attr", "split_tail", "first", "multiply", "compact", "concat",
        "sha256", "norm_"))]


@pytest.mark.parametrize("kind", ["stock", "opaque"])
def test_compile_ast_without_custom_functions(kind: str) -> None:
    """compile_ast on raw library ASTs: with the stock Functions (fast built-ins enabled)
    and with an opaque `call` (every function delegated)."""
    functions = Functions()
    call = functions.call_function if kind == "stock" else (
        lambda name, args: functions.call_function(name, args))
    bad = []
    for src in BUILTIN_CORPUS:
        parsed = jmespath.compile(src)
        compiled = compile_ast(parsed.parsed, call)
        for i, doc in enumerate(DOCS):
            want = outcome(parsed.search, doc)
            got = outcome(compiled, doc)
            if not same_outcome(want, got):
                bad.append(f"{src!r} on doc #{i}: interpreter {want!r}, compiled {got!r}")
    assert len(BUILTIN_CORPUS) > 100
    assert not bad, "\n".join(bad[:20])


def test_fast_builtins_are_enabled_only_for_stock_functions() -> None:
    from router.expr.jmes import _FUNCTIONS
    from router.expr.jmes_compile import _FAST_BUILTINS, _stock_builtins

    assert _stock_builtins(_FUNCTIONS.call_function) == frozenset(_FAST_BUILTINS)
    assert _stock_builtins(lambda name, args: None) == frozenset()

    class Custom(Functions):
        @jmespath.functions.signature({"types": []})
        def _func_length(self, arg: Any) -> Any:
            return -1

    custom = Custom()
    assert "length" not in _stock_builtins(custom.call_function)
    assert compile_ast(jmespath.compile("length(@)").parsed, custom.call_function)("abc") == -1


def test_same_helper_distinguishes_types() -> None:
    assert same([1, {"a": 1.0}], [1, {"a": 1.0}])
    assert not same(1, 1.0) and not same(1, True) and not same(0, False)
    assert not same([1], [True]) and not same({"a": 1, "b": 2}, {"b": 2, "a": 1})


def test_literal_identity_and_types_are_preserved() -> None:
    expr = compile_expr('`[1, {"a": 2}]`')
    assert expr.search(None) is expr.search({})  # the same literal object, like the interpreter
    assert same(compile_expr("[a, b, c]").search({"a": 1, "b": 1.0, "c": True}), [1, 1.0, True])


def test_unknown_node_type_raises_like_the_interpreter() -> None:
    node = {"type": "no_such_node", "children": []}
    with pytest.raises(NotImplementedError):
        compile_ast(node, Functions().call_function)(None)
    with pytest.raises(NotImplementedError):
        ParsedResult("?", node).search(None)


def test_exprefs_are_what_the_library_expects() -> None:
    ref = compile_expr("&a").search({})
    assert type(ref).__name__ == "_Expression"
    assert ref.visit(ref.expression, {"a": 3}) == 3
    assert ref.visit({"type": "field", "value": "b", "children": []}, {"b": 4}) == 4
    typed = compile_expr("type(&a)")  # the library's type() has no branch for exprefs
    assert typed.search({}) is None and reference(typed)({}) is None


@pytest.mark.parametrize("src, doc", [
    ("length(a)", {"a": 1}),                 # JMESPathTypeError
    ("sum(strs)", {"strs": ["a"]}),          # JMESPathTypeError from the fast path's fallback
    ("join(',', nums)", {"nums": [1]}),
    ("a < '2'", {"a": 1}),                   # TypeError from int < str
    ("nums[::0]", {"nums": [1, 2]}),         # ValueError: slice step cannot be zero
    ("contains(s, `1`)", {"s": "x"}),        # TypeError from `in`
    ("map(&a, e)", {"e": None}),
    ("merge(o, a)", {"o": {}, "a": 1}),
    ("starts_with(a, 'x')", {"a": 1}),
    ("sort_by(p, &name)", {"p": [{"name": "a"}, {"name": None}]}),
    ("max(mixed)", {"mixed": [1, "a"]}),
    ("abs(s)", {"s": "x"}),
    ("to_array(length(a))", {"a": 1}),
    ("a || length(a)", {"a": ""}),
    ("[?length(@) > `1`]", [[1, 2], 3]),
    ("iso_time(a) || number(b)", {"a": "nonsense", "b": "1"}),
])
def test_errors_inside_evaluation_return_none(src: str, doc: Any) -> None:
    expr = compile_expr(src)
    want = outcome(reference(expr), doc)
    got = outcome(expr._fn, doc)
    assert same_outcome(want, got), (want, got)
    if want[0] == "raise":
        assert expr.search(doc) is None
    else:
        assert same(expr.search(doc), want[1])


def test_parse_cache_is_not_mutated_by_compile_expr() -> None:
    src = "a == 'x' && b"
    guarded = compile_expr(src, falsy_logic_is_null=True)
    plain = compile_expr(src)
    assert guarded.search({"a": "y"}) is None
    assert plain.search({"a": "y"}) is False
    assert jmespath.compile(src).parsed["type"] == "and_expression"
    money = compile_expr("money(m)")
    assert len(money.parsed["children"]) == 2
    assert len(jmespath.compile("money(m)").parsed["children"]) == 1


# --- timing (python -m tests.test_jmes_compile) -----------------------------------------

def _bench(source: str = "segment", rounds: int = 50) -> None:
    data = MAPPINGS[source]
    exprs = mapping_exprs(data)
    docs = golden_documents(source, data)
    interpreted = [reference(e) for e in exprs]

    def old_search(ref: Callable[[Any], Any], doc: Any) -> Any:  # Expr.search before
        try:
            return ref(doc)
        except (jmespath.exceptions.JMESPathError, TypeError, ValueError, AttributeError):
            return None

    def run_old() -> None:
        for doc in docs:
            for ref in interpreted:
                old_search(ref, doc)

    def run_new() -> None:
        for doc in docs:
            for expr in exprs:
                expr.search(doc)

    def timed(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    run_old(), run_new()  # warm up
    old_times, new_times = [], []
    for _ in range(rounds):  # interleaved, best of each: robust to load drift
        old_times.append(timed(run_old))
        new_times.append(timed(run_new))
    old, new = min(old_times), min(new_times)
    n = len(exprs) * len(docs)
    print(f"{source}: {len(exprs)} expressions x {len(docs)} documents = {n} searches, "
          f"best of {rounds}")
    print(f"  interpreter: {old * 1e3:8.2f} ms  ({old / n * 1e6:.2f} us/search)")
    print(f"  compiled:    {new * 1e3:8.2f} ms  ({new / n * 1e6:.2f} us/search)")
    print(f"  speedup:     {old / new:.1f}x")


if __name__ == "__main__":
    for name in ("segment", *sorted(set(MAPPINGS) - {"segment"})):
        _bench(name)
