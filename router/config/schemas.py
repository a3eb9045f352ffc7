"""The JSON Schemas shipped with the package, one per YAML file kind, and schema checks
that turn jsonschema errors into positioned, readable issues."""

from __future__ import annotations

import difflib
import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from router.config.issues import Issue
from router.config.yamlload import Loaded

KINDS = ("router", "consent", "account", "canonical", "mapping", "destination", "test")


@functools.cache
def schema(kind: str) -> dict[str, Any]:
    text = resources.files("router.config").joinpath(f"schemas/{kind}.schema.json").read_text()
    return json.loads(text)


@functools.cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind))


def _leaf_errors(error: ValidationError) -> list[ValidationError]:
    """For anyOf/oneOf, the most specific sub-errors explain more than the summary."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        deepest = max(len(e.absolute_path) for e in error.context)
        if deepest > len(error.absolute_path):
            return [e for e in error.context if len(e.absolute_path) == deepest][:1]
    return [error]


def _message_and_hint(error: ValidationError) -> tuple[list[str | int], str, str]:
    """Position (path), message and hint for one schema error."""
    path = list(error.absolute_path)
    where = ".".join(str(p) for p in path) or "(top level)"
    validator_name = error.validator
    hint = ""
    if validator_name == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extras = [k for k in error.instance if k not in allowed] if isinstance(error.instance,
                                                                              dict) else []
        if extras:
            key = extras[0]
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else (
                f"allowed keys: {', '.join(allowed)}" if allowed else "")
            return [*path, key], f"unknown key {key!r} in {where}", hint
    if validator_name == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return path, f"{where}: missing required key {missing!r}", hint
    if validator_name == "enum":
        hint = "allowed values: " + ", ".join(json.dumps(v) for v in error.validator_value)
        close = difflib.get_close_matches(str(error.instance),
                                          [str(v) for v in error.validator_value], n=1)
        if close:
            hint = f"did you mean {close[0]!r}? " + hint
        return path, f"{where}: {error.instance!r} is not an allowed value", hint
    if validator_name == "pattern":
        return path, f"{where}: {error.instance!r} does not match the pattern {error.validator_value}", hint
    if validator_name == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return path, f"{where}: expected {want}, got {type(error.instance).__name__} " \
                     f"{json.dumps(error.instance, default=str)[:60]}", hint
    return path, f"{where}: {error.message}", hint


def check(loaded: Loaded, kind: str) -> list[Issue]:
    """Every schema problem of one file (not only the first), positioned."""
    issues: list[Issue] = []
    errors = sorted(validator(kind).iter_errors(loaded.data), key=lambda e: list(
        map(str, e.absolute_path)))
    for error in errors:
        for leaf in _leaf_errors(error):
            path, message, hint = _message_and_hint(leaf)
            schema_path = f"{kind}.schema.json#/" + "/".join(str(p) for p in leaf.absolute_schema_path)
            issues.append(loaded.issue(tuple(path), message, code="schema",
                                       schema_path=schema_path, hint=hint))
    return issues


def check_settings(loaded: Loaded, base: tuple[str | int, ...], settings: Any,
                   settings_schema: dict[str, Any], destination: str) -> list[Issue]:
    """An account's connection settings against a destination's own settings schema."""
    issues: list[Issue] = []
    try:
        val = Draft202012Validator(settings_schema)
    except Exception:  # the destination file's schema is broken; reported there
        return issues
    for error in val.iter_errors(settings if settings is not None else {}):
        for leaf in _leaf_errors(error):
            path, message, hint = _message_and_hint(leaf)
            issues.append(loaded.issue((*base, *path),
                                       f"settings for destination {destination!r}: {message}",
                                       code="settings", hint=hint,
                                       schema_path=f"destinations.d/{destination}.yaml#/settings"))
    return issues
