"""Portable SQL fragments the backends share (SQLite and PostgreSQL accept both).

The `signals` column of an event holds space-separated tokens (`base.signals_text`);
whether an event carries an identifier is a LIKE per token, with `_` and `%` escaped
so a token matches only itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.store.base import Identifier


def like_token(token: str) -> str:
    escaped = token.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"% {escaped} %"


def presence(identifier: Identifier, column: str = "e.signals") -> tuple[str, list[Any]]:
    """SQL true when the event carries one of the identifier's alternatives."""
    alternatives, args = [], []
    for group in identifier:
        parts = []
        for token in group:
            parts.append(f"{column} LIKE ? ESCAPE '\\'")
            args.append(like_token(token))
        if parts:
            alternatives.append("(" + " AND ".join(parts) + ")")
    if not alternatives:
        return "(1 = 0)", []
    return "(" + " OR ".join(alternatives) + ")", args


def marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))
