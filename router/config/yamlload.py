"""YAML loading that remembers where every value came from.

PyYAML silently keeps the last of two duplicate keys and forgets positions once it
builds Python objects. We compose the node tree ourselves so that every value has a
(line, column) for error messages, duplicate keys become errors, and `${NAME}` /
`${NAME:-default}` references are resolved from the environment while remembering
that the value was a reference (the secret-literal check needs to know).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from router.config.issues import ERROR, Issue

try:  # the C composer is several times faster; validate runs in pre-commit hooks
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Path = tuple[str | int, ...]

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_FULL_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-.*)?\}$")


@dataclass
class Loaded:
    """A parsed YAML document plus where each of its nodes sits in the file."""

    file: str
    data: Any
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    env_refs: set[Path] = field(default_factory=set)
    issues: list[Issue] = field(default_factory=list)

    def mark(self, path: Path) -> tuple[int, int]:
        """The position of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get((), (1, 1))

    def issue(self, path: Path, message: str, *, severity: str = ERROR, code: str = "",
              schema_path: str = "", hint: str = "") -> Issue:
        line, col = self.mark(path)
        return Issue(self.file, line, col, severity, message, code, schema_path, hint)


def resolve_env(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Substitute `${NAME}` and `${NAME:-default}`; return the text and unset names."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return ENV_REF.sub(sub, text), missing


def is_env_reference(text: str) -> bool:
    return bool(_FULL_ENV_REF.match(text.strip()))


class _Builder:
    def __init__(self, loaded: Loaded, env: Mapping[str, str] | None):
        self.loaded = loaded
        self.env = env
        self.loader = _Loader("")

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.loaded.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        self.loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key)
            line = key_node.start_mark.line + 1
            if key in out:
                self.loaded.issues.append(Issue(
                    self.loaded.file, line, key_node.start_mark.column + 1, ERROR,
                    f"duplicate key {key!r} (first defined on line {first_seen[key]})",
                    code="duplicate-key",
                    hint="YAML keeps only one of them; remove or rename the other",
                ))
                continue
            first_seen[key] = line
            out[key] = self.build(value_node, (*path, key))
            # point at the key: a nested value starts on the next line, people read the key
            self.loaded.marks[(*path, key)] = (line, key_node.start_mark.column + 1)
        return out

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        value = self.loader.construct_object(node)
        if isinstance(value, str) and "${" in value and self.env is not None:
            resolved, missing = resolve_env(value, self.env)
            if is_env_reference(value):
                self.loaded.env_refs.add(path)
            for name in missing:
                line, col = self.loaded.marks[path]
                self.loaded.issues.append(Issue(
                    self.loaded.file, line, col, ERROR,
                    f"environment variable {name} is not set",
                    code="env-unset",
                    hint=f"export {name}=... or give a default: ${{{name}:-value}}",
                ))
            return resolved
        # dates and timestamps stay text: the schemas and expressions expect strings
        if not isinstance(value, str | int | float | bool | type(None)):
            return node.value
        return value


def load_yaml(text: str, file: str, env: Mapping[str, str] | None = None,
              resolve: bool = True) -> Loaded:
    """Parse one YAML document; problems are collected on the result, not raised.

    `resolve=False` leaves `${...}` as written: only configs/ files hold credentials;
    in mappings and destinations the text is documentation or template.
    """
    loaded = Loaded(file=file, data=None)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        ctx = f" ({exc.context})" if exc.context else ""
        loaded.issues.append(Issue(file, line, col, ERROR, f"YAML syntax error: {problem}{ctx}",
                                   code="yaml-syntax"))
        return loaded
    except yaml.YAMLError as exc:
        loaded.issues.append(Issue(file, 1, 1, ERROR, f"YAML error: {exc}", code="yaml-syntax"))
        return loaded
    if node is None:
        loaded.data = {}
        loaded.marks[()] = (1, 1)
        return loaded
    env_map = (os.environ if env is None else env) if resolve else None
    loaded.data = _Builder(loaded, env_map).build(node, ())
    return loaded


def load_yaml_file(path: str, display: str | None = None,
                   env: Mapping[str, str] | None = None, resolve: bool = True) -> Loaded:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return load_yaml(text, display or path, env, resolve)
