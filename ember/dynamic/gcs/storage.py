"""Where the GCS keeps its tables: in memory (default) or in a SQLite file that survives restarts."""

from __future__ import annotations

import os
import pickle
import sqlite3
from typing import Any, Callable


Change = Callable[[str, str, str, Any], None]


class MemoryStorage:
    """Tables as dicts in the GCS process, replicated to its driver (Note [GCS restart]).

    ``on_change(op, table, key, value)`` ("put" or "delete") hears of every change; the driver
    keeps the copy (a MemoryStorage itself) and hands its ``tables`` to a restarted GCS.
    """

    durable = False

    def __init__(self, tables: dict[str, dict[str, Any]] | None = None) -> None:
        self.tables: dict[str, dict[str, Any]] = tables or {}
        self.on_change: Change | None = None

    def put(self, table: str, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.tables.setdefault(table, {})[key] = value
        if self.on_change is not None:
            self.on_change("put", table, key, value)

    def get(self, table: str, key: str) -> Any:
        """Return the value under ``key`` or None."""
        return self.tables.get(table, {}).get(key)

    def delete(self, table: str, key: str) -> bool:
        """Remove ``key``; return whether it was there."""
        existed = self.tables.get(table, {}).pop(key, None) is not None
        if existed and self.on_change is not None:
            self.on_change("delete", table, key, None)
        return existed

    def apply(self, op: str, table: str, key: str, value: Any) -> None:
        """Replay one change heard through another storage's ``on_change``."""
        if op == "put":
            self.put(table, key, value)
        else:
            self.delete(table, key)

    def items(self, table: str) -> list[tuple[str, Any]]:
        """Return every (key, value) of ``table``."""
        return list(self.tables.get(table, {}).items())

    def close(self) -> None:
        """Nothing to release."""


class SqliteStorage(MemoryStorage):
    """Tables in a SQLite file, read back when a GCS restarts over the same file."""

    durable = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (tbl TEXT, key TEXT, value BLOB, "
                         "PRIMARY KEY (tbl, key))")
        for tbl, key, value in self._db.execute("SELECT tbl, key, value FROM kv"):
            super().put(tbl, key, pickle.loads(value))

    def put(self, table: str, key: str, value: Any) -> None:
        super().put(table, key, value)
        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)",
                         (table, key, pickle.dumps(value, protocol=5)))

    def delete(self, table: str, key: str) -> bool:
        self._db.execute("DELETE FROM kv WHERE tbl = ? AND key = ?", (table, key))
        return super().delete(table, key)

    def close(self) -> None:
        self._db.close()


def open_storage(url: str | None, tables: dict[str, dict[str, Any]] | None = None
                 ) -> MemoryStorage:
    """Open the backend named by ``url``: None or "memory" (starting from ``tables``, a
    replica's copy), or "sqlite:///path/to/file"."""
    if url in (None, "", "memory"):
        return MemoryStorage(tables)
    if url.startswith("sqlite://"):
        return SqliteStorage(url[len("sqlite://"):])
    raise ValueError(f"unknown GCS storage {url!r}; use 'memory' or 'sqlite:///path'")


def write_snapshot(path: str, tables: dict) -> None:
    """Save a replica's tables for a restarting GCS (a file only this user can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(tables, f, protocol=5)


def read_snapshot(path: str) -> dict:
    """Load and remove the tables ``write_snapshot`` saved."""
    with open(path, "rb") as f:
        tables = pickle.load(f)
    os.unlink(path)
    return tables
