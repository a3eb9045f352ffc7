"""The shared transform library: normalizers, hashers, time and money."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.expr import functions as fx
from router.expr.jinja import compile_template, render
from router.expr.jmes import ExprError, compile_expr


@pytest.mark.parametrize(("raw", "country", "e164"), [
    ("(415) 555-0123", "US", "+14155550123"),
    ("+1 415 555 0123", "GB", "+14155550123"),
    ("07911 123456", "GB", "+447911123456"),
    ("0044 20 7946 0958", "US", "+442079460958"),
    ("030 1234567", "DE", "+49301234567"),
    ("+33 6 12 34 56 78", None, "+33612345678"),
    ("06 12 34 56 78", "FR", "+33612345678"),
    ("+91 98765 43210", "US", "+919876543210"),
])
def test_phone_to_e164(raw: str, country: str | None, e164: str) -> None:
    assert fx.norm_phone(raw, country) == e164
    assert fx.phone_digits(fx.norm_phone(raw, country)) == e164[1:]


@pytest.mark.parametrize(("fn", "raw", "out"), [
    (fx.norm_email, "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
    (fx.norm_email_gmail, "Jane.Doe+x@GMail.com", "janedoe+x@gmail.com"),
    (fx.norm_email_gmail, "jane.doe@example.com", "jane.doe@example.com"),
    (fx.norm_name, "  O'Brien-Smith ", "obriensmith"),
    (fx.norm_name, "Zoë", "zoë"),
    (fx.norm_city, "San Francisco", "sanfrancisco"),
    (fx.norm_city, "St. Louis", "stlouis"),
    (fx.norm_state, "CA", "ca"),
    (fx.norm_country, "US", "us"),
    (fx.norm_country, "United States", "us"),
    (fx.norm_country, "Norway", "no"),
    (fx.norm_country, "DEU", "de"),
    (fx.norm_country, "UK", "gb"),
    (fx.norm_country, "Narnia", None),
    (fx.norm_gender, "Female", "f"),
    (fx.norm_gender, "M", "m"),
    (fx.norm_date_of_birth, "1990-02-07", "19900207"),
    (fx.norm_date_of_birth, "19900207", "19900207"),
])
def test_normalizers(fn, raw, out) -> None:  # type: ignore[no-untyped-def]
    assert fn(raw) == out


def test_zip_normalization_depends_on_country() -> None:
    assert fx.norm_zip("94103-1234", "US") == "94103"
    assert fx.norm_zip("SW1A 1AA", "GB") == "sw1a1aa"


def test_sha256_is_lowercase_hex_and_never_hashes_twice() -> None:
    digest = fx.sha256("jane.doe@example.com")
    assert digest == hashlib.sha256(b"jane.doe@example.com").hexdigest()
    assert fx.sha256(digest) == digest
    assert fx.sha256(digest.upper()) == digest
    assert fx.sha256(None) is None and fx.sha256("") is None


@given(st.text(min_size=1))
def test_hashing_is_idempotent(text: str) -> None:
    once = fx.sha256(text)
    assert fx.sha256(once) == once


@pytest.mark.parametrize(("raw", "iso"), [
    ("2026-11-20T14:03:07Z", "2026-11-20T14:03:07.000Z"),
    ("2026-11-20T16:03:07.5+02:00", "2026-11-20T14:03:07.500Z"),
    (1763647387, "2025-11-20T14:03:07.000Z"),
    (1763647387123, "2025-11-20T14:03:07.123Z"),
    ("1763647387", "2025-11-20T14:03:07.000Z"),
    ("not a time", None),
    (None, None),
    ("2026-13-20T14:03:07.125Z", None),  # canonical shape, impossible month
    # numbers no clock can show are no time, not a crash of the ingest request
    ("inf", None), ("-infinity", None), ("nan", None), (1e300, None), ("-1e20", None),
])
def test_iso_time(raw: object, iso: str | None) -> None:
    assert fx.iso_time(raw) == iso
    assert (fx.parse_time(raw) is None) == (iso is None)


@given(st.datetimes(min_value=__import__("datetime").datetime(1000, 1, 1)))
def test_canonical_times_take_the_fast_path_to_the_same_answer(moment) -> None:  # type: ignore[no-untyped-def]
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    slow = text[:-1] + "+00:00"  # the same instant, not in the fast path's shape
    assert fx.iso_time(text) == fx.iso_time(slow) == text
    assert fx.parse_time(text) == fx.parse_time(slow)


def test_unix_conversions() -> None:
    assert fx.unix_seconds("2026-11-20T14:03:07.999Z") == 1795183387
    assert fx.unix_millis("2026-11-20T14:03:07.999Z") == 1795183387999
    assert fx.unix_micros("2026-11-20T14:03:07.000001Z") == 1795183387000001


@pytest.mark.parametrize(("raw", "num"), [
    ("12.50", 12.5), ("1,299.00", 1299.0), (" 7 ", 7), (3, 3), ("abc", None), (True, None),
    ("", None), ("NaN", None),
])
def test_to_number(raw: object, num: object) -> None:
    assert fx.to_number(raw) == num


def test_money_rounds_half_up() -> None:
    assert fx.money("10.005") == 10.01
    assert fx.money_string(1500) == "1500.00"
    assert fx.to_micros("12.34") == 12_340_000


def test_ids_become_text() -> None:
    assert fx.to_str(5482910001) == "5482910001"
    assert fx.to_str(12.0) == "12"
    assert fx.to_str(None) is None


def test_query_param_from_urls_paths_and_queries() -> None:
    assert fx.query_param("https://x.test/p?fbclid=abc&a=1", "fbclid") == "abc"
    assert fx.query_param("/products/shoe?gclid=G1&ScCid=s", "ScCid") == "s"
    assert fx.query_param("awc=123_456", "awc") == "123_456"
    assert fx.query_param(None, "x") is None


def test_attr_reads_name_value_lists() -> None:
    pairs = [{"name": "_fbp", "value": "fb.1.2.3"}, {"key": "ttclid", "value": "T"}]
    assert fx.attr(pairs, "_fbp") == "fb.1.2.3"
    assert fx.attr(pairs, "ttclid") == "T"
    assert fx.attr(pairs, "missing") is None


def test_compact_drops_empty_values_recursively() -> None:
    assert fx.compact({"a": None, "b": "", "c": [], "d": {"e": None}, "f": 0, "g": [None, {}, 1],
                       "h": False}) == {"f": 0, "g": [1], "h": False}


def test_jmespath_functions_are_null_safe_and_checked() -> None:
    expr = compile_expr("upper(properties.currency)")
    assert expr.search({}) is None
    assert expr.search({"properties": {"currency": "eur"}}) == "EUR"
    assert compile_expr("money(x)").search({"x": "1.005"}) == 1.01
    assert compile_expr("multiply(p, q)").search({"p": "2.5", "q": 3}) == 7.5
    with pytest.raises(ExprError, match="unknown function"):
        compile_expr("nosuch(x)")


def test_guard_expressions_in_mappings_yield_null_not_false() -> None:
    guarded = compile_expr("shipping && money(shipping)", falsy_logic_is_null=True)
    assert guarded.search({}) is None
    assert guarded.search({"shipping": "4.5"}) == 4.5
    chained = compile_expr("a == 'x' && 'web' || b && 'pos'", falsy_logic_is_null=True)
    assert chained.search({"a": "y"}) is None
    assert chained.search({"a": "x"}) == "web"
    plain = compile_expr("flag")  # a field that is false stays false
    assert plain.search({"flag": False}) is False


@pytest.mark.parametrize(("template", "context", "value"), [
    ("{{ x }}", {"x": "548291"}, "548291"),        # numeric-looking ids stay text
    ("{{ x }}", {"x": "2024_0001"}, "2024_0001"),
    ("{{ a }}-{{ b }}", {"a": 1, "b": 2}, "1-2"),  # text built from parts stays text
    ("{{ x }}", {"x": 548291}, 548291),            # numbers stay numbers
    ("{{ [1, 2] }}", {}, [1, 2]),                  # constants keep their type
    ("{{ {'a': x} }}", {"x": "5"}, {"a": "5"}),
    ("{{ e.items }}", {"e": {"items": [1]}}, [1]),  # a key, not dict.items
    ("{{ e.items }}", {"e": {}}, None),
])
def test_template_values_keep_exactly_their_type(template: str, context: dict[str, object],
                                                 value: object) -> None:
    result = render(compile_template(template), context)
    assert result == value and type(result) is type(value)


def test_project_and_alnum_email() -> None:
    assert fx.project([{"id": "a", "price": 2, "x": 1}, "junk"],
                      {"item_id": "id", "item_price": "price", "kind": "=sku"}) == \
        [{"item_id": "a", "item_price": 2, "kind": "sku"}]
    # field tables are parsed once and remembered: equal-looking constants of other
    # types (1, 1.0, True) and unhashable ones are still each their own
    for constant in (1, 1.0, True, [1], {"a": 1}):
        row = fx.project([{"p": "2"}], {"price": "p|money_string", "q": constant})[0]
        assert row == {"price": "2.00", "q": constant} and type(row["q"]) is type(constant)
    assert fx.norm_email_alnum(" Jane.Doe+promo@Example.com ") == "janedoe@example.com"


def test_jinja_filters_keep_native_types() -> None:
    assert render(compile_template("{{ v | money }}"), {"v": "12.345"}) == 12.35
    assert render(compile_template("{{ e | norm_email | sha256 }}"), {"e": " A@B.CO "}) == \
        hashlib.sha256(b"a@b.co").hexdigest()
    assert render(compile_template("{{ missing.deep.path }}"), {}) is None


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)), st.booleans())
def test_ascii_names_take_the_fast_path_to_the_same_answer(text: str, spaces: bool) -> None:
    import unicodedata

    by_category = "".join(ch for ch in text if unicodedata.category(ch)[0] in "LMN"
                          or (spaces and ch.isspace()))
    assert fx._keep(text, spaces) == by_category


_INLINE_CASES = [
    "{{ e.a.b }}", "{{ e.items }}", "{{ e.get }}", "{{ e.a.items }}", "{{ e.missing.deep }}",
    "{{ e.text.upper() }}", "{{ e.n.real }}", "{{ e.none.x }}", "{{ e.list.x }}",
    "{{ e.a.b or e.x.y or 'z' }}", "{{ {'k': e.a.b, 'm': e.q} }}", "{{ e.a.b | default('d') }}",
    "{{ e.a.__class__ }}", "{{ e.list | map(attribute='id') | list }}",
]


@pytest.mark.parametrize("source", _INLINE_CASES)
def test_inlined_dict_lookups_render_what_jinja_renders(source: str) -> None:
    """The code generator inlines `a.b` on plain dicts; every other case must still go
    through the sandbox's getattr, with the same result (or the same error)."""
    from jinja2.nativetypes import NativeCodeGenerator

    from router.expr import jinja as rj

    class Reference(rj.SandboxedNativeEnvironment):
        code_generator_class = NativeCodeGenerator

    reference = rj.make_environment()
    reference.__class__ = Reference
    context = {"e": {"a": {"b": 1, "items": [2]}, "items": [3], "text": "Ab", "n": 4,
                     "none": None, "list": [{"id": 5}, {"id": 6}]}}

    def outcome(env: object) -> object:
        try:
            return repr(render(env.from_string(source), context))  # type: ignore[attr-defined]
        except Exception as exc:  # the error itself is what is compared
            return f"{type(exc).__name__}: {exc}"

    # the inlined path is exercised, except for names of dict attributes (never inlined)
    assert ("_rga" in rj.ENV.compile(source, raw=True)) == (source not in (
        "{{ e.items }}", "{{ e.get }}"))
    assert "_rga" not in reference.compile(source, raw=True)  # against Jinja's own
    assert outcome(rj.ENV) == outcome(reference)
