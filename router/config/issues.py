"""Problems found while loading configuration, and how they are printed.

Every problem carries the file, line and column it points at, so a person can fix
it without reading our code; the three output formats exist because the same list
is read by people (text), CI annotations (github) and tools (json).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import orjson

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, order=True)
class Issue:
    file: str
    line: int
    column: int
    severity: str
    message: str
    code: str = ""
    schema_path: str = ""
    hint: str = ""

    def text(self) -> str:
        parts = [f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"]
        if self.code:
            parts[0] += f" [{self.code}]"
        if self.schema_path:
            parts.append(f"    schema: {self.schema_path}")
        if self.hint:
            parts.append(f"    hint: {self.hint}")
        return "\n".join(parts)

    def github(self) -> str:
        level = "error" if self.severity == ERROR else "warning"
        msg = self.message + (f" (hint: {self.hint})" if self.hint else "")
        msg = msg.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        title = self.code or "router validate"
        return f"::{level} file={self.file},line={self.line},col={self.column},title={title}::{msg}"


class ConfigError(Exception):
    """Raised when a config dir cannot be compiled; carries every problem found."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        errors = [i for i in issues if i.severity == ERROR]
        first = errors[0].text() if errors else "invalid configuration"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


def format_issues(issues: Iterable[Issue], fmt: str) -> str:
    items = sorted(issues)
    if fmt == "json":
        return orjson.dumps([asdict(i) for i in items], option=orjson.OPT_INDENT_2).decode()
    if fmt == "github":
        return "\n".join(i.github() for i in items)
    return "\n".join(i.text() for i in items)
