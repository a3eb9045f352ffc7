"""The sandboxed, native-typed Jinja environment that builds destination payloads.

Native types matter: `{{ event.custom_data.value }}` must stay a number, not become
"12.5". The sandbox matters because templates are configuration written by many
people and reviewed in pull requests, not trusted code. Templates are compiled at
config load, so unknown filters and syntax errors fail `router validate`.
"""

from __future__ import annotations

from ast import literal_eval, parse
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.compiler import Frame, optimizeconst
from jinja2.nativetypes import NativeCodeGenerator, NativeEnvironment, NativeTemplate
from jinja2.runtime import Context, new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from router.expr import functions as fx

FILTERS: dict[str, Callable[..., Any]] = {
    "sha256": fx.sha256,
    "md5": fx.md5,
    "sha1": fx.sha1,
    "norm_email": fx.norm_email,
    "norm_email_gmail": fx.norm_email_gmail,
    "norm_email_alnum": fx.norm_email_alnum,
    "norm_email_gmail_canonical": fx.norm_email_gmail_canonical,
    "norm_email_unaliased": fx.norm_email_unaliased,
    "norm_phone": fx.norm_phone,
    "phone_digits": fx.phone_digits,
    "norm_name": fx.norm_name,
    "norm_city": fx.norm_city,
    "norm_state": fx.norm_state,
    "norm_zip": fx.norm_zip,
    "norm_country": fx.norm_country,
    "norm_gender": fx.norm_gender,
    "norm_date_of_birth": fx.norm_date_of_birth,
    "norm_external_id": fx.norm_external_id,
    "to_str": fx.to_str,
    "to_number": fx.to_number,
    "to_int": fx.to_int,
    "money": fx.money,
    "money_string": fx.money_string,
    "micros": fx.to_micros,
    "iso_time": fx.iso_time,
    "unix_seconds": fx.unix_seconds,
    "unix_millis": fx.unix_millis,
    "unix_micros": fx.unix_micros,
    "strftime": fx.strftime,
    "query_param": fx.query_param,
    "regex_group": fx.regex_group,
    "compact": fx.compact,
    "first_of": fx.first,
    "as_list": fx.as_list,
    "project": fx.project,
    "is_sha256": fx.is_sha256,
    "base64": fx.to_base64,
    "keep_empty": fx.keep_empty,
}


class _Text(str):
    """A string an expression computed (marked by `finalize`), as opposed to constant
    template text that Jinja's native code generator folded into a string."""


def _mark_text(value: Any) -> Any:
    return _Text(value) if type(value) is str else value


def _native_concat(values: Any) -> Any:
    """Native types without guessing: an expression's value keeps its type.

    Jinja's own native mode runs `ast.literal_eval` on every string result, so an order
    id "548291" would leave as the integer 548291, "2024_0001" as 20240001 and a text
    "1-2" as -1. Here computed strings stay text, text built from several parts stays
    text, and only a constant Jinja folded to a string (`{{ [1, 2] }}`) is evaluated."""
    values = iter(values)  # a generator from render, a list from {% set %} blocks
    value = next(values, _END)
    if value is _END:
        return None
    second = next(values, _END)
    if second is not _END:
        return "".join(str(v) for v in chain((value, second), values))
    if isinstance(value, _Text):
        return str(value)
    if not isinstance(value, str):
        return value
    try:
        return literal_eval(parse(value, mode="eval"))
    except (ValueError, SyntaxError, MemoryError):
        return value


_END = object()


class _InlineDictCodeGenerator(NativeCodeGenerator):
    """Jinja's native code generator, with `a.b` on plain dicts inlined.

    Jinja compiles every `a.b` to a call of `environment.getattr(a, "b")`; payload
    templates make hundreds per event, nearly all on the event's plain dicts. For a name
    that is no dict attribute, the generated code looks the key up itself when the
    object is a dict holding it — exactly the first branch of
    `SandboxedNativeEnvironment.getattr` — and calls that method for everything else
    (missing keys, non-dicts, Undefined), so results and errors are unchanged."""

    _inline_serial = 0

    @optimizeconst
    def visit_Getattr(self, node: nodes.Getattr, frame: Frame) -> None:
        if self.environment.is_async or node.attr in _DICT_ATTRIBUTES:
            super().visit_Getattr(node, frame)
            return
        self._inline_serial += 1
        tmp = f"_rga{self._inline_serial}"
        key = repr(node.attr)
        self.write(f"({tmp}[{key}] if type({tmp} := (")
        self.visit(node.node, frame)
        self.write(f")) is dict and {key} in {tmp} else environment.getattr({tmp}, {key}))")


class SandboxedNativeEnvironment(ImmutableSandboxedEnvironment, NativeEnvironment):
    """Sandbox rules from ImmutableSandboxedEnvironment, native rendering from Native."""

    concat = staticmethod(_native_concat)
    code_generator_class = _InlineDictCodeGenerator

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `event.custom_data.items` means the "items" key, never dict.items: payload
        # fields named like dict methods must not turn into bound methods
        if type(obj) is dict:  # payloads are plain dicts: skip the ABC check
            if attribute in obj:
                return obj[attribute]
            if attribute in _DICT_METHOD_NAMES or attribute not in _DICT_ATTRIBUTES:
                # what the sandbox's getattr ends with after two exceptions
                return self.undefined(obj=obj, name=attribute)
            return super().getattr(obj, attribute)
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            if attribute in _DICT_METHOD_NAMES:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


_DICT_METHOD_NAMES = frozenset({"items", "keys", "values", "copy", "pop", "update", "clear"})
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _RouterNativeTemplate(NativeTemplate):
    environment_class = SandboxedNativeEnvironment

    def render(self, *args: Any, **kwargs: Any) -> Any:
        # Per render, Jinja's `new_context` copies the template's globals out of a
        # ChainMap (walked twice), builds a key set of them and a blocks table: over half
        # the cost of a short template such as a `send_if`. Globals never change once a
        # config is compiled and our templates define no blocks, so the context is built
        # here from one flat copy made per template, with the attributes `Context`
        # itself would set (templates with blocks take Jinja's own path).
        state = self.__dict__.get("_context_state")
        if state is None:
            flat = dict(self.globals)
            state = self.__dict__["_context_state"] = (flat, frozenset(flat))
        flat, keys = state
        if self.blocks:
            ctx = new_context(self.environment, self.name, self.blocks,
                              dict(*args, **kwargs), False, flat)
        else:
            parent = flat.copy()
            parent.update(*args, **kwargs)
            ctx = _new_context(Context)
            ctx.parent = parent
            ctx.vars = {}
            ctx.environment = self.environment
            ctx.eval_ctx = nodes.EvalContext(self.environment, self.name)
            ctx.exported_vars = set()
            ctx.name = self.name
            ctx.globals_keys = keys
            ctx.blocks = {}
        try:
            return _native_concat(self.root_render_func(ctx))
        except Exception:
            return self.environment.handle_exception()


_new_context = Context.__new__


SandboxedNativeEnvironment.template_class = _RouterNativeTemplate


class LenientUndefined(ChainableUndefined):
    """Missing payload fields (even nested: `a.b.c`) render as nothing, then None."""


def _undefined_safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Filters see None for a missing value, never Jinja's Undefined object."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for arg in args:  # rebuild the arguments only when one is Undefined
            if isinstance(arg, Undefined):
                args = tuple(None if isinstance(a, Undefined) else a for a in args)
                break
        return fn(*args, **kwargs)
    wrapper.__name__ = getattr(fn, "__name__", "filter")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def make_environment(strict: bool = False) -> SandboxedNativeEnvironment:
    env = SandboxedNativeEnvironment(
        undefined=StrictUndefined if strict else LenientUndefined,
        finalize=_mark_text,
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters.update({name: _undefined_safe(fn) for name, fn in FILTERS.items()})
    return env


ENV = make_environment()


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class TemplateError(ValueError):
    pass


def render(template: Any, context: dict[str, Any]) -> Any:
    """Render to a native value; an undefined result becomes None."""
    value = template.render(context)
    return None if isinstance(value, Undefined) else value


def check_template(source: str) -> None:
    """Everything `validate` needs — syntax, and every filter and test name known —
    without generating code (which `serve` does on first use)."""
    from jinja2 import nodes

    try:
        tree = ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template error: {exc.message}") from None
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = ENV.filters if isinstance(node, nodes.Filter) else ENV.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            raise TemplateError(f"template error: No {kind} named {node.name!r}.")


def compile_template(source: str) -> Any:
    """Compile one template string; syntax errors and unknown filters raise TemplateError."""
    try:
        return ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template error: {exc.message}") from None
