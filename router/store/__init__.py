"""Store backends behind one interface, chosen by URL."""

from __future__ import annotations

from router.store.base import Store


def open_store(url: str) -> Store:
    if url.startswith("sqlite:"):
        from router.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgres://", "postgresql://")):
        raise ValueError("the PostgreSQL store is not available in this version; "
                         "use sqlite:///path.db")
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path.db")
